//! The JSON body of a push: Moneybird's envelope plus the event id and time. Pure.

use serde::Serialize;
use serde_json::value::RawValue;

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
}

impl Envelope<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope of strings and raw JSON always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
        .to_json();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"administration_id":"1","webhook_id":"7","webhook_token":"tok","entity_type":"Invoice","entity_id":"9007199254740993","state":"paid","action":"invoice.paid","event_id":"42","occurred_at":"2026-11-22T10:00:00.000000Z","entity":{"id": "9007199254740993", "lines": []}}"#
        );
    }
}
