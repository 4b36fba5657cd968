//! The JSON body of a push, in the webhook's payload format: billhook's (Moneybird's envelope plus
//! the event id and time), Moneybird's own (moneybird.rs), or the Standard Webhooks shape. Pure.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::catalog::EntityKind;
use crate::moneybird;

/// `webhooks.payload_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    Billhook,
    Moneybird,
    Standard,
}

impl PayloadFormat {
    /// The names, the default first (webhook_settings.rs checks them).
    pub const NAMES: [&'static str; 3] = ["billhook", "moneybird", "standard"];

    pub fn parse(name: &str) -> Option<PayloadFormat> {
        match name {
            "billhook" => Some(PayloadFormat::Billhook),
            "moneybird" => Some(PayloadFormat::Moneybird),
            "standard" => Some(PayloadFormat::Standard),
            _ => None,
        }
    }
}

/// `webhooks.payload`: the whole envelope, or a thin one without the entity (Stripe's thin
/// events), for receivers that fetch the current state themselves and keep fewer copies of
/// personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    Full,
    Thin,
}

impl Payload {
    /// The names, the default first (webhook_settings.rs checks them).
    pub const NAMES: [&'static str; 2] = ["full", "thin"];

    pub fn parse(name: &str) -> Option<Payload> {
        match name {
            "full" => Some(Payload::Full),
            "thin" => Some(Payload::Thin),
            _ => None,
        }
    }
}

/// One push of one event to one webhook. Ids are strings, as everywhere receivers see them.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub administration_id: String,
    pub webhook_id: String,
    pub webhook_token: &'a str,
    pub entity_type: &'a str,
    pub entity_id: String,
    pub state: Option<&'a str>,
    pub action: &'a str,
    /// None for the registration check, which is not an event.
    pub event_id: Option<String>,
    pub occurred_at: &'a str,
    pub entity: &'a RawValue,
    /// The entity's state when the event's transaction began, if the transaction changed it: it
    /// picks the Moneybird name of an update.
    #[serde(skip)]
    pub previous_state: Option<&'a str>,
}

impl Envelope<'_> {
    /// A thin payload is the format's envelope without its `entity` key (Moneybird's names of a
    /// thin push still come from the entity).
    pub fn to_json(&self, format: PayloadFormat, payload: Payload) -> Vec<u8> {
        let mut body = match format {
            PayloadFormat::Billhook if payload == Payload::Full => {
                return serde_json::to_vec(self).expect("an envelope of strings and raw JSON serialises")
            }
            PayloadFormat::Billhook => {
                serde_json::to_value(self).expect("an envelope of strings and raw JSON serialises")
            }
            PayloadFormat::Moneybird => self.moneybird(),
            PayloadFormat::Standard => self.standard(),
        };
        if payload == Payload::Thin {
            let holder = if format == PayloadFormat::Standard { &mut body["data"] } else { &mut body };
            holder.as_object_mut().map(|keys| keys.remove("entity"));
        }
        serde_json::to_vec(&body).expect("JSON values serialise")
    }

    fn entity_value(&self) -> Value {
        serde_json::from_str(self.entity.get()).unwrap_or(Value::Null)
    }

    /// Moneybird's envelope exactly (reference 003): its names for the action, the entity type and
    /// state, and its JSON of the entity; nothing else.
    /// Entities Moneybird has no name for (a tracked table's) keep billhook's names and JSON.
    fn moneybird(&self) -> Value {
        let entity = self.entity_value();
        let action =
            moneybird::event_name(self.action, self.state, self.previous_state, &entity).unwrap_or(self.action);
        let (entity_type, state, entity) = match EntityKind::from_entity_type(self.entity_type) {
            Some(kind) => (
                moneybird::entity_type(kind),
                self.state.map(|state| moneybird::state(kind, state)),
                moneybird::entity(kind, &entity),
            ),
            None => (self.entity_type, self.state, entity),
        };
        json!({
            "administration_id": self.administration_id,
            "webhook_id": self.webhook_id,
            "webhook_token": self.webhook_token,
            "entity_type": entity_type,
            "entity_id": self.entity_id,
            "state": state,
            "action": action,
            "entity": entity,
        })
    }

    /// The Standard Webhooks payload: `type`, `timestamp` and the event in `data`. The token stays
    /// out: the signature is what a Standard Webhooks receiver checks.
    fn standard(&self) -> Value {
        json!({
            "type": self.action,
            "timestamp": self.occurred_at,
            "data": {
                "event_id": self.event_id,
                "administration_id": self.administration_id,
                "webhook_id": self.webhook_id,
                "entity_type": self.entity_type,
                "entity_id": self.entity_id,
                "state": self.state,
                "entity": self.entity,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice_push(entity: &RawValue, format: PayloadFormat, previous_state: Option<&str>) -> Value {
        thin_or_full_push(entity, format, previous_state, Payload::Full)
    }

    fn thin_or_full_push(
        entity: &RawValue,
        format: PayloadFormat,
        previous_state: Option<&str>,
        payload: Payload,
    ) -> Value {
        let body = Envelope {
            administration_id: 1.to_string(),
            webhook_id: 7.to_string(),
            webhook_token: "tok",
            entity_type: "Invoice",
            entity_id: 5.to_string(),
            state: Some("open"),
            action: "invoice.updated",
            event_id: Some(42.to_string()),
            occurred_at: "2026-11-22T10:00:00.000000Z",
            entity,
            previous_state,
        }
        .to_json(format, payload);
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn a_thin_push_is_each_formats_envelope_without_the_entity() {
        let entity = RawValue::from_string(r#"{"id": "5", "state": "open", "lines": []}"#.to_string()).unwrap();
        for format in [PayloadFormat::Billhook, PayloadFormat::Moneybird, PayloadFormat::Standard] {
            let mut full = invoice_push(&entity, format, Some("draft"));
            let thin = thin_or_full_push(&entity, format, Some("draft"), Payload::Thin);
            let holder = if format == PayloadFormat::Standard { &mut full["data"] } else { &mut full };
            assert!(holder.as_object_mut().unwrap().remove("entity").is_some(), "{format:?}");
            assert_eq!(thin, full, "{format:?}: the same envelope less the entity");
        }
        let thin = thin_or_full_push(&entity, PayloadFormat::Moneybird, Some("draft"), Payload::Thin);
        assert_eq!(thin["action"], "sales_invoice_state_changed_to_open");
    }

    #[test]
    fn a_standard_push_is_type_timestamp_and_data() {
        let entity = RawValue::from_string(r#"{"id": "5"}"#.to_string()).unwrap();
        let push = invoice_push(&entity, PayloadFormat::Standard, None);
        assert_eq!(
            push,
            json!({"type": "invoice.updated", "timestamp": "2026-11-22T10:00:00.000000Z",
                   "data": {"event_id": "42", "administration_id": "1", "webhook_id": "7", "entity_type": "Invoice",
                            "entity_id": "5", "state": "open", "entity": {"id": "5"}}})
        );
    }

    #[test]
    fn a_moneybird_push_has_moneybird_names_and_only_moneybird_keys() {
        let entity = RawValue::from_string(r#"{"id": "5", "state": "open", "lines": []}"#.to_string()).unwrap();
        let push = invoice_push(&entity, PayloadFormat::Moneybird, Some("draft"));
        let keys: Vec<&str> = push.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "administration_id",
            "webhook_id",
            "webhook_token",
            "entity_type",
            "entity_id",
            "state",
            "action",
            "entity",
        ];
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected);
        assert_eq!(push["action"], "sales_invoice_state_changed_to_open");
        assert_eq!(push["entity_type"], "SalesInvoice");
        let unchanged = invoice_push(&entity, PayloadFormat::Moneybird, None);
        assert_eq!(unchanged["action"], "sales_invoice_updated");
    }

    #[test]
    fn envelope_has_moneybird_fields_in_order_with_string_ids() {
        let entity = RawValue::from_string(r#"{"id": "9007199254740993", "lines": []}"#.to_string()).unwrap();
        let body = Envelope {
            administration_id: 1.to_string(),
            webhook_id: 7.to_string(),
            webhook_token: "tok",
            entity_type: "Invoice",
            entity_id: 9007199254740993_i64.to_string(),
            state: Some("paid"),
            action: "invoice.paid",
            event_id: Some(42.to_string()),
            occurred_at: "2026-11-22T10:00:00.000000Z",
            entity: &entity,
            previous_state: None,
        }
        .to_json(PayloadFormat::Billhook, Payload::Full);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"administration_id":"1","webhook_id":"7","webhook_token":"tok","entity_type":"Invoice","entity_id":"9007199254740993","state":"paid","action":"invoice.paid","event_id":"42","occurred_at":"2026-11-22T10:00:00.000000Z","entity":{"id": "9007199254740993", "lines": []}}"#
        );
    }
}
