//! The JSON body of a push, in the webhook's payload format: billhook's (Moneybird's envelope plus
//! the event id and time), Moneybird's own (moneybird.rs, named by catalog/moneybird_names.rs), or
//! the Standard Webhooks shape. Pure.

use serde::Serialize;
#[cfg(test)]
use serde_json::json;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::catalog::moneybird_names;
use crate::catalog::EntityKind;
use crate::delivering::push::moneybird;

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
    pub previous_state: Option<&'a str>,
}

/// billhook's envelope: Moneybird's fields in Moneybird's order, then the event's id and time.
#[derive(Serialize)]
struct BillhookBody<'a> {
    administration_id: &'a str,
    webhook_id: &'a str,
    webhook_token: &'a str,
    entity_type: &'a str,
    entity_id: &'a str,
    state: Option<&'a str>,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    occurred_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<&'a RawValue>,
}

/// The Standard Webhooks payload: `type`, `timestamp` and the event in `data`. The token stays
/// out: the signature is what a Standard Webhooks receiver checks.
#[derive(Serialize)]
struct StandardBody<'a> {
    data: StandardData<'a>,
    timestamp: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
}

#[derive(Serialize)]
struct StandardData<'a> {
    administration_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<&'a RawValue>,
    entity_id: &'a str,
    entity_type: &'a str,
    event_id: Option<&'a str>,
    state: Option<&'a str>,
    webhook_id: &'a str,
}

/// Why a push could not be built from its event: the event is quarantined with this reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Unbuildable(pub String);

impl Envelope<'_> {
    /// The push's body. The entity goes out as stored, byte for byte, never parsed (its depth and
    /// size are the application's), except where Moneybird's names and fields need billhook's
    /// entity read: an entity that cannot be read then is the event's fault, returned as such.
    /// A thin payload is the format's envelope without its `entity` key (Moneybird's names of a
    /// thin push still come from the entity).
    pub fn to_json(&self, format: PayloadFormat, payload: Payload) -> Result<Vec<u8>, Unbuildable> {
        let entity = (payload == Payload::Full).then_some(self.entity);
        let body = match format {
            PayloadFormat::Billhook => serde_json::to_vec(&BillhookBody {
                administration_id: &self.administration_id,
                webhook_id: &self.webhook_id,
                webhook_token: self.webhook_token,
                entity_type: self.entity_type,
                entity_id: &self.entity_id,
                state: self.state,
                action: self.action,
                event_id: self.event_id.as_deref(),
                occurred_at: self.occurred_at,
                entity,
            }),
            PayloadFormat::Standard => serde_json::to_vec(&StandardBody {
                data: StandardData {
                    administration_id: &self.administration_id,
                    entity,
                    entity_id: &self.entity_id,
                    entity_type: self.entity_type,
                    event_id: self.event_id.as_deref(),
                    state: self.state,
                    webhook_id: &self.webhook_id,
                },
                timestamp: self.occurred_at,
                event_type: self.action,
            }),
            PayloadFormat::Moneybird => return self.moneybird(payload),
        };
        body.map_err(|e| Unbuildable(format!("the push could not be written as JSON: {e}")))
    }

    /// Moneybird's envelope exactly (reference 003): its names for the action, the entity type and
    /// state, and its JSON of the entity; nothing else.
    /// Entities Moneybird has no name for (a tracked table's) keep billhook's names and JSON.
    fn moneybird(&self, payload: Payload) -> Result<Vec<u8>, Unbuildable> {
        let Some(kind) = EntityKind::from_entity_type(self.entity_type) else {
            let action = moneybird_names::event_name(self.action, self.state, self.previous_state, &Value::Null);
            let envelope = MoneybirdBody {
                entity_type: self.entity_type,
                state: self.state,
                action: action.unwrap_or(self.action),
                entity: (payload == Payload::Full).then_some(MoneybirdEntity::Raw(self.entity)),
                ..self.moneybird_ids()
            };
            return serde_json::to_vec(&envelope)
                .map_err(|e| Unbuildable(format!("the push could not be written as JSON: {e}")));
        };
        let entity: Value = serde_json::from_str(self.entity.get()).map_err(|e| {
            Unbuildable(format!("the {} entity cannot be read for Moneybird's format: {e}", self.entity_type))
        })?;
        let action =
            moneybird_names::event_name(self.action, self.state, self.previous_state, &entity).unwrap_or(self.action);
        let envelope = MoneybirdBody {
            entity_type: moneybird_names::entity_type(kind),
            state: self.state.map(|state| moneybird_names::state(kind, state)),
            action,
            entity: (payload == Payload::Full).then(|| MoneybirdEntity::Converted(moneybird::entity(kind, &entity))),
            ..self.moneybird_ids()
        };
        serde_json::to_vec(&envelope).map_err(|e| Unbuildable(format!("the push could not be written as JSON: {e}")))
    }

    fn moneybird_ids(&self) -> MoneybirdBody<'_> {
        MoneybirdBody {
            administration_id: &self.administration_id,
            webhook_id: &self.webhook_id,
            webhook_token: self.webhook_token,
            entity_type: self.entity_type,
            entity_id: &self.entity_id,
            state: None,
            action: self.action,
            entity: None,
        }
    }
}

/// Moneybird's envelope, keys in alphabetical order.
#[derive(Serialize)]
struct MoneybirdBody<'a> {
    action: &'a str,
    administration_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<MoneybirdEntity<'a>>,
    entity_id: &'a str,
    entity_type: &'a str,
    state: Option<&'a str>,
    webhook_id: &'a str,
    webhook_token: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MoneybirdEntity<'a> {
    /// Moneybird's JSON of one of billhook's entities.
    Converted(Value),
    /// A tracked table's row, as stored.
    Raw(&'a RawValue),
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
        .to_json(format, payload)
        .unwrap();
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
    fn an_entity_of_any_depth_goes_out_as_stored_and_only_moneybirds_catalog_entities_are_read() {
        let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        let entity = RawValue::from_string(deep.clone()).unwrap();
        let push = |entity_type, format| {
            Envelope {
                administration_id: 1.to_string(),
                webhook_id: 7.to_string(),
                webhook_token: "tok",
                entity_type,
                entity_id: 5.to_string(),
                state: None,
                action: "order.created",
                event_id: Some(42.to_string()),
                occurred_at: "2026-11-22T10:00:00.000000Z",
                entity: &entity,
                previous_state: None,
            }
            .to_json(format, Payload::Full)
        };
        for format in [PayloadFormat::Billhook, PayloadFormat::Standard, PayloadFormat::Moneybird] {
            let body = String::from_utf8(push("Order", format).unwrap()).unwrap();
            assert!(body.contains(&format!(r#""entity":{deep}"#)), "{format:?}: the entity byte for byte");
        }
        let refused = push("Invoice", PayloadFormat::Moneybird).unwrap_err();
        assert!(refused.0.contains("recursion limit"), "{}", refused.0);
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
        .to_json(PayloadFormat::Billhook, Payload::Full)
        .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"administration_id":"1","webhook_id":"7","webhook_token":"tok","entity_type":"Invoice","entity_id":"9007199254740993","state":"paid","action":"invoice.paid","event_id":"42","occurred_at":"2026-11-22T10:00:00.000000Z","entity":{"id": "9007199254740993", "lines": []}}"#
        );
    }
}
