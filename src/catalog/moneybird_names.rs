//! Moneybird's names (references 002 and 003) for webhooks with `payload_format => 'moneybird'`:
//! the Moneybird event name of each billhook event and the conditions that choose between them, the
//! groups a subscription may name, and Moneybird's names of entity types and states. They belong to
//! the catalog because subscriptions are resolved against them; the entity JSON in Moneybird's shape
//! is delivering/push/moneybird.rs's. Pure: no Postgres calls.
//!
//! `billhook.moneybird_events` is filled from MONEYBIRD_EVENTS at install time; docs/webhooks.md's
//! table is the same list.

use serde_json::Value;

use super::EntityKind;

/// When a billhook event is pushed under a Moneybird name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// The event's transaction changed the entity's state to this one.
    StateChangedTo(&'static str),
    /// This field of the entity (billhook's JSON) is not null: what the entity was made from.
    MadeFrom(&'static str),
}

impl Condition {
    /// As `billhook.moneybird_events.condition` shows it.
    pub fn describe(self) -> Option<String> {
        match self {
            Condition::Always => None,
            Condition::StateChangedTo(state) => Some(format!("state changed to {state}")),
            Condition::MadeFrom(field) => Some(format!("entity {field} is set")),
        }
    }
}

pub struct MoneybirdEvent {
    pub name: &'static str,
    /// The billhook event pushed under this name.
    pub event: &'static str,
    pub condition: Condition,
}

const fn mb(name: &'static str, event: &'static str, condition: Condition) -> MoneybirdEvent {
    MoneybirdEvent { name, event, condition }
}

use Condition::{Always, MadeFrom, StateChangedTo};

/// Every Moneybird name billhook pushes, in resolution order: an event's push is named by the first
/// entry for its billhook event whose condition holds (each billhook event ends with an `Always`).
/// States that have an event of their own (paid, late, cancelled) are named by that event; the
/// `invoice.updated` of the same change stays `sales_invoice_updated`.
pub const MONEYBIRD_EVENTS: &[MoneybirdEvent] = &[
    mb("sales_invoice_created_based_on_recurring", "invoice.created", MadeFrom("recurring_invoice_id")),
    mb("sales_invoice_created_based_on_estimate", "invoice.created", MadeFrom("quotation_id")),
    mb("sales_invoice_created", "invoice.created", Always),
    mb("sales_invoice_state_changed_to_draft", "invoice.updated", StateChangedTo("draft")),
    mb("sales_invoice_state_changed_to_scheduled", "invoice.updated", StateChangedTo("scheduled")),
    mb("sales_invoice_state_changed_to_open", "invoice.updated", StateChangedTo("open")),
    mb("sales_invoice_state_changed_to_pending_payment", "invoice.updated", StateChangedTo("pending_payment")),
    mb("sales_invoice_state_changed_to_reminded", "invoice.updated", StateChangedTo("reminded")),
    mb("sales_invoice_state_changed_to_uncollectible", "invoice.updated", StateChangedTo("uncollectible")),
    mb("sales_invoice_updated", "invoice.updated", Always),
    mb("sales_invoice_send_email", "invoice.sent", Always),
    mb("sales_invoice_state_changed_to_paid", "invoice.paid", Always),
    mb("sales_invoice_state_changed_to_late", "invoice.overdue", Always),
    mb("sales_invoice_state_changed_to_cancelled", "invoice.cancelled", Always),
    mb("sales_invoice_destroyed", "invoice.deleted", Always),
    mb("estimate_created", "quotation.created", Always),
    mb("estimate_mark_open", "quotation.updated", StateChangedTo("open")),
    mb("estimate_updated", "quotation.updated", Always),
    mb("estimate_send_email", "quotation.sent", Always),
    mb("estimate_mark_accepted", "quotation.accepted", Always),
    mb("estimate_mark_rejected", "quotation.rejected", Always),
    mb("estimate_state_changed_to_late", "quotation.expired", Always),
    mb("estimate_billed", "quotation.converted", Always),
    mb("contact_created", "customer.created", Always),
    mb("contact_changed", "customer.updated", Always),
    mb("contact_destroyed", "customer.deleted", Always),
    mb("document_saved", "expense.created", Always),
    mb("document_updated", "expense.updated", Always),
    mb("document_updated", "expense.approved", Always),
    mb("payment_registered", "expense.paid", Always),
    mb("document_destroyed", "expense.deleted", Always),
    mb("recurring_sales_invoice_invoice_created", "recurring_invoice.generated", Always),
    mb("recurring_sales_invoice_creating_skipped_due_to_limits", "recurring_invoice.failed", Always),
    mb("recurring_sales_invoice_deactivated", "recurring_invoice.completed", Always),
];

/// The prefix Moneybird's events of invoice state changes share: its legacy default subscription.
const STATE_CHANGES: &str = "sales_invoice_state_changed_to_";

/// Moneybird's `entity_type` for billhook's kind.
pub fn entity_type(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Invoice => "SalesInvoice",
        EntityKind::Quotation => "Estimate",
        EntityKind::Customer => "Contact",
        EntityKind::Expense => "PurchaseInvoice",
        EntityKind::RecurringInvoice => "RecurringSalesInvoice",
    }
}

/// Moneybird's top-level names: each subscribes to the names it begins (`estimate` to `estimate_*`).
pub const TOP_LEVEL_NAMES: [&str; 6] =
    ["sales_invoice", "estimate", "contact", "document", "payment", "recurring_sales_invoice"];

fn in_group(name: &str, group: &str) -> bool {
    name.strip_prefix(group).is_some_and(|rest| rest.starts_with('_'))
}

/// The Moneybird names an entry of `enabled_events` stands for (a name or a group), in list order;
/// None if it is neither.
pub fn names_for(entry: &str) -> Option<Vec<&'static MoneybirdEvent>> {
    let matching: Vec<&MoneybirdEvent> = MONEYBIRD_EVENTS
        .iter()
        .filter(|m| m.name == entry || (TOP_LEVEL_NAMES.contains(&entry) && in_group(m.name, entry)))
        .collect();
    (!matching.is_empty()).then_some(matching)
}

/// What a Moneybird-format webhook without chosen events receives: Moneybird's "old implementation",
/// the state changes of sales invoices.
pub fn legacy_default() -> Vec<&'static MoneybirdEvent> {
    MONEYBIRD_EVENTS.iter().filter(|m| m.name.starts_with(STATE_CHANGES)).collect()
}

/// Whether the Moneybird name of a push of `event` depends on its entity (which event_name then
/// reads).
pub fn reads_entity(event: &str) -> bool {
    MONEYBIRD_EVENTS.iter().any(|m| m.event == event && matches!(m.condition, MadeFrom(_)))
}

/// The Moneybird name of a push of `event` about `entity` (billhook's JSON), given the entity's
/// `state` at commit and its `previous_state` (set when the transaction changed the state).
pub fn event_name(
    event: &str,
    state: Option<&str>,
    previous_state: Option<&str>,
    entity: &Value,
) -> Option<&'static str> {
    let state_changed_to = state.filter(|_| previous_state.is_some() && previous_state != state);
    MONEYBIRD_EVENTS
        .iter()
        .filter(|m| m.event == event)
        .find(|m| match m.condition {
            Always => true,
            StateChangedTo(state) => state_changed_to == Some(state),
            MadeFrom(field) => entity.get(field).is_some_and(|v| !v.is_null()),
        })
        .map(|m| m.name)
}

/// Moneybird's name of a billhook state: quotations expire, Moneybird's estimates are late.
pub fn state(kind: EntityKind, state: &str) -> &str {
    match (kind, state) {
        (EntityKind::Quotation, "expired") => "late",
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::EVENTS;

    #[test]
    fn every_billhook_event_has_a_moneybird_name_and_every_name_a_real_event() {
        for event in EVENTS {
            let last = MONEYBIRD_EVENTS.iter().rfind(|m| m.event == event.name);
            assert_eq!(last.map(|m| m.condition), Some(Always), "{} needs an unconditional name last", event.name);
        }
        assert!(MONEYBIRD_EVENTS.iter().all(|m| EVENTS.iter().any(|e| e.name == m.event)));
        for m in MONEYBIRD_EVENTS {
            assert_eq!(
                TOP_LEVEL_NAMES.iter().filter(|g| in_group(m.name, g)).count(),
                1,
                "{}'s top-level name",
                m.name
            );
        }
    }

    #[test]
    fn pushes_are_named_by_the_first_condition_that_holds() {
        let plain = json!({"recurring_invoice_id": null, "quotation_id": null});
        assert_eq!(event_name("invoice.created", None, None, &plain), Some("sales_invoice_created"));
        let recurring = json!({"recurring_invoice_id": "3", "quotation_id": null});
        assert_eq!(
            event_name("invoice.created", None, None, &recurring),
            Some("sales_invoice_created_based_on_recurring")
        );
        let converted = json!({"quotation_id": "9"});
        assert_eq!(
            event_name("invoice.created", None, None, &converted),
            Some("sales_invoice_created_based_on_estimate")
        );
        assert_eq!(
            event_name("invoice.updated", Some("open"), Some("draft"), &plain),
            Some("sales_invoice_state_changed_to_open")
        );
        assert_eq!(event_name("invoice.updated", Some("paid"), Some("open"), &plain), Some("sales_invoice_updated"));
        assert_eq!(event_name("invoice.updated", Some("open"), None, &plain), Some("sales_invoice_updated"));
        assert_eq!(
            event_name("invoice.overdue", Some("late"), Some("open"), &plain),
            Some("sales_invoice_state_changed_to_late")
        );
        assert_eq!(event_name("no.such", None, None, &plain), None);
    }

    #[test]
    fn groups_and_names_subscribe_and_the_legacy_default_is_every_state_change() {
        let names = |entry| names_for(entry).map(|ms| ms.iter().map(|m| m.name).collect::<Vec<_>>());
        assert_eq!(names("contact"), Some(vec!["contact_created", "contact_changed", "contact_destroyed"]));
        assert_eq!(names("estimate_billed"), Some(vec!["estimate_billed"]));
        assert_eq!(names("document_updated").map(|n| n.len()), Some(2), "two billhook events");
        assert_eq!(names("invoice.paid"), None);
        let default: Vec<&str> = legacy_default().iter().map(|m| m.event).collect();
        assert_eq!(default.len(), 9);
        assert!(default.contains(&"invoice.paid") && default.contains(&"invoice.updated"));
    }
}
