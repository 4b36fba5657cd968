//! A JSON Schema (draft 2020-12) per event type of the push body in billhook's payload format, so
//! receivers can generate types and the tests notice when a payload's shape changes
//! (`billhook.event_types.schema`). Written from the entity builders of sql/entities.sql and
//! billhook.emit_operations: every key is required, no other key is allowed, and a column that
//! may be NULL is `null` or its type. Pure.

use serde_json::{json, Map, Value};

use crate::catalog::{EntityKind, EVENTS, OPERATION_EVENTS};

/// The schema of a push of `event`: billhook's envelope around the entity of its kind (or the
/// webhook or delivery of an operational event), or around any JSON object for a registered event
/// type (a tracked table's row).
pub fn event_schema(event: &str) -> Value {
    let operation = OPERATION_EVENTS.iter().find(|o| o.name == event).map(|o| o.entity_type);
    let (entity_type, entity_id, entity) = match (EVENTS.iter().find(|e| e.name == event), operation) {
        (Some(e), _) => (json!({"const": e.kind.entity_type()}), id(), entity(e.kind)),
        (None, Some(entity_type)) => {
            let entity = if entity_type == "Delivery" { delivery() } else { webhook() };
            (json!({"const": entity_type}), id(), entity)
        }
        // A tracked table's ids are its own, and may be negative.
        (None, None) => (json!({"type": "string"}), signed_id(), json!({"type": "object"})),
    };
    let mut schema = object([
        ("administration_id", id()),
        ("webhook_id", id()),
        ("webhook_token", text()),
        ("entity_type", entity_type),
        ("entity_id", entity_id),
        ("state", nullable(text())),
        ("action", json!({"const": event})),
        ("event_id", id()),
        ("occurred_at", time()),
        ("entity", erasable(entity)),
    ]);
    let header = [
        ("$schema", json!("https://json-schema.org/draft/2020-12/schema")),
        ("title", json!(format!("billhook push: {event}"))),
    ];
    let fields = schema.as_object_mut().expect("an object schema");
    for (key, value) in header {
        fields.insert(key.to_string(), value);
    }
    schema
}

fn entity(kind: EntityKind) -> Value {
    match kind {
        EntityKind::Customer => customer(),
        EntityKind::Invoice => document(
            [
                ("invoice_number", nullable(text())),
                (
                    "state",
                    one_of(&[
                        "draft",
                        "scheduled",
                        "open",
                        "pending_payment",
                        "reminded",
                        "late",
                        "paid",
                        "uncollectible",
                        "cancelled",
                    ]),
                ),
                ("invoice_date", date()),
                ("due_date", nullable(date())),
            ],
            [
                ("payment_conditions", nullable(text())),
                ("sent_at", nullable(time())),
                ("paid_at", nullable(time())),
                ("recurring_invoice_id", nullable(id())),
                ("quotation_id", nullable(id())),
            ],
        ),
        EntityKind::Quotation => document(
            [
                ("quotation_number", nullable(text())),
                ("state", one_of(&["draft", "open", "accepted", "rejected", "expired", "billed"])),
                ("quotation_date", date()),
                ("valid_until", nullable(date())),
            ],
            [
                ("pre_text", nullable(text())),
                ("sent_at", nullable(time())),
                ("accepted_at", nullable(time())),
                ("invoice_id", nullable(id())),
            ],
        ),
        EntityKind::Expense => object([
            ("id", id()),
            ("administration_id", id()),
            ("reference", nullable(text())),
            ("supplier_name", text()),
            ("description", nullable(text())),
            ("expense_date", date()),
            ("due_date", nullable(date())),
            ("currency", text()),
            ("amount", decimal()),
            ("tax_rate", decimal()),
            ("total_price_incl_tax", decimal()),
            ("state", one_of(&["new", "approved", "paid"])),
            ("approved_at", nullable(time())),
            ("paid_at", nullable(time())),
            ("created_at", time()),
            ("updated_at", time()),
        ]),
        EntityKind::RecurringInvoice => object([
            ("id", id()),
            ("administration_id", id()),
            ("customer_id", nullable(id())),
            ("customer", nullable_object(erasable(customer()))),
            ("frequency", one_of(&["weekly", "monthly", "quarterly", "half_yearly", "yearly"])),
            ("frequency_interval", integer()),
            ("start_date", date()),
            ("next_date", date()),
            ("end_date", nullable(date())),
            ("max_occurrences", nullable(integer())),
            ("occurrences", integer()),
            ("active", json!({"type": "boolean"})),
            ("state", one_of(&["active", "inactive"])),
            ("currency", text()),
            ("discount", decimal()),
            ("reference", nullable(text())),
            ("language", text()),
            ("payment_conditions", nullable(text())),
            ("due_days", integer()),
            ("failed_attempts", integer()),
            ("last_error", nullable(text())),
            ("last_invoice_id", nullable(id())),
            ("completed_at", nullable(time())),
            ("created_at", time()),
            ("updated_at", time()),
            ("lines", lines()),
        ]),
    }
}

fn customer() -> Value {
    let optional_text = [
        "customer_number",
        "company_name",
        "firstname",
        "lastname",
        "attention",
        "address1",
        "address2",
        "zipcode",
        "city",
        "country",
        "email",
        "phone",
        "tax_number",
        "chamber_of_commerce",
        "bank_account",
        "send_invoices_to_email",
    ];
    object(
        [("id", id()), ("administration_id", id())]
            .into_iter()
            .chain(optional_text.map(|key| (key, nullable(text()))))
            .chain([("created_at", time()), ("updated_at", time())]),
    )
}

/// An invoice or a quotation: the fields both have around the kind's own (`numbering` after the
/// customer, `extra` after the language).
fn document<const N: usize, const M: usize>(numbering: [(&str, Value); N], extra: [(&str, Value); M]) -> Value {
    let head = [("id", id()), ("administration_id", id()), ("customer_id", id()), ("customer", erasable(customer()))];
    let middle = [("currency", text()), ("discount", decimal()), ("reference", nullable(text())), ("language", text())];
    let tail = [
        ("created_at", time()),
        ("updated_at", time()),
        ("lines", lines()),
        ("total_price_excl_tax", decimal()),
        ("total_tax", decimal()),
        ("total_price_incl_tax", decimal()),
    ];
    object(head.into_iter().chain(numbering).chain(middle).chain(extra).chain(tail))
}

fn lines() -> Value {
    json!({"type": "array", "items": object([
        ("id", id()),
        ("description", text()),
        ("amount", decimal()),
        ("price", decimal()),
        ("tax_rate", decimal()),
        ("row_order", integer()),
        ("total_price_excl_tax", decimal()),
        ("created_at", time()),
        ("updated_at", time()),
    ])})
}

fn webhook() -> Value {
    object([
        ("id", id()),
        ("url", text()),
        ("enabled", json!({"type": "boolean"})),
        ("consecutive_failures", integer()),
        ("failing_since", nullable(time())),
        ("last_http_status", nullable(integer())),
        ("last_success_at", nullable(time())),
        ("disabled_at", nullable(time())),
        ("disabled_reason", nullable(text())),
    ])
}

fn delivery() -> Value {
    object([
        ("id", id()),
        ("webhook_id", id()),
        ("event_id", id()),
        ("event_type", text()),
        ("entity_type", text()),
        ("entity_id", id()),
        ("idempotency_key", json!({"type": "string", "format": "uuid"})),
        ("attempts", integer()),
        ("last_attempt_at", nullable(time())),
        ("last_http_status", nullable(integer())),
        ("last_error", nullable(text())),
    ])
}

/// `schema`, or what billhook.erase_entity leaves of an entity wherever it is stored (the event's
/// entity, or an entity nested in another: billhook.nested_entities): its id and the time of the erasure.
fn erasable(schema: Value) -> Value {
    json!({"anyOf": [schema, object([("id", id()), ("erased_at", time())])]})
}

/// An object with exactly these keys, each required.
fn object<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let properties: Map<String, Value> = fields.into_iter().map(|(key, schema)| (key.to_string(), schema)).collect();
    let required: Vec<&String> = properties.keys().collect();
    json!({"type": "object", "required": required, "additionalProperties": false, "properties": properties})
}

fn nullable_object(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// `schema`'s type or null.
fn nullable(mut schema: Value) -> Value {
    let kind = schema["type"].take();
    schema["type"] = json!([kind, "null"]);
    schema
}

/// Ids are strings of digits: 64-bit ids are safe in JavaScript that way.
fn id() -> Value {
    json!({"type": "string", "pattern": "^[0-9]+$"})
}

fn signed_id() -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]+$"})
}

fn text() -> Value {
    json!({"type": "string"})
}

fn integer() -> Value {
    json!({"type": "integer"})
}

/// Money and rates as strings of decimals, exact.
fn decimal() -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$"})
}

fn date() -> Value {
    json!({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"})
}

/// billhook.json_time: UTC, microseconds.
fn time() -> Value {
    json!({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"})
}

fn one_of(names: &[&str]) -> Value {
    json!({"type": "string", "enum": names})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn required(schema: &Value) -> Vec<&str> {
        schema["required"].as_array().unwrap().iter().map(|key| key.as_str().unwrap()).collect()
    }

    #[test]
    fn every_catalog_event_has_the_envelope_with_its_name_and_entity_type() {
        for event in &EVENTS {
            let schema = event_schema(event.name);
            assert_eq!(schema["properties"]["action"]["const"], event.name);
            assert_eq!(schema["properties"]["entity_type"]["const"], event.kind.entity_type());
            let mut keys = required(&schema);
            keys.sort();
            assert_eq!(
                keys,
                [
                    "action",
                    "administration_id",
                    "entity",
                    "entity_id",
                    "entity_type",
                    "event_id",
                    "occurred_at",
                    "state",
                    "webhook_id",
                    "webhook_token"
                ]
            );
            assert_eq!(schema["additionalProperties"], false);
        }
        for operation in &OPERATION_EVENTS {
            let entity_type = &event_schema(operation.name)["properties"]["entity_type"]["const"];
            assert_eq!(entity_type, if operation.name.starts_with("delivery.") { "Delivery" } else { "Webhook" });
        }
    }

    #[test]
    fn entities_require_every_key_and_allow_null_only_where_the_column_may_be_null() {
        let invoice = &event_schema("invoice.paid")["properties"]["entity"]["anyOf"][0];
        let keys = required(invoice);
        assert_eq!(keys.len(), 23, "{keys:?}");
        assert_eq!(invoice["properties"]["due_date"]["type"], json!(["string", "null"]));
        assert_eq!(invoice["properties"]["invoice_date"]["type"], "string");
        assert_eq!(invoice["properties"]["customer"]["anyOf"][0]["additionalProperties"], false);
        assert_eq!(required(&invoice["properties"]["customer"]["anyOf"][1]), ["erased_at", "id"]);
        assert_eq!(required(&invoice["properties"]["lines"]["items"]).len(), 9);
        let erased = &event_schema("customer.deleted")["properties"]["entity"]["anyOf"][1];
        assert_eq!(required(erased), ["erased_at", "id"]);
    }

    #[test]
    fn a_registered_event_type_has_the_envelope_around_any_object() {
        let schema = event_schema("order.shipped");
        assert_eq!(schema["properties"]["entity"]["anyOf"][0], json!({"type": "object"}));
        assert_eq!(schema["properties"]["entity_type"], json!({"type": "string"}));
        assert_eq!(schema["properties"]["entity_id"]["pattern"], json!("^-?[0-9]+$"));
        assert_eq!(event_schema("invoice.paid")["properties"]["entity_id"]["pattern"], json!("^[0-9]+$"));
    }
}
