//! The event catalog: the entity kinds and the tables they come from, the 25 events of the
//! invoicing schema and the 3 operational events. The single source of them: `billhook.event_types`
//! is filled from it at install time (`sql_api::event_catalog::event_catalog`). Who receives which
//! event is subscriptions.rs's; Moneybird's names for events are moneybird_names.rs's. Pure: no
//! Postgres calls, so plain unit tests cover it.

pub mod moneybird_names;
pub mod push_schemas;
pub mod subscriptions;

/// The kinds of entity that emit events, with the names receivers see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityKind {
    Customer,
    Invoice,
    Quotation,
    Expense,
    RecurringInvoice,
}

impl EntityKind {
    /// Every kind, in the order the catalog lists their events.
    pub const ALL: [EntityKind; 5] = [
        EntityKind::Invoice,
        EntityKind::Quotation,
        EntityKind::Customer,
        EntityKind::Expense,
        EntityKind::RecurringInvoice,
    ];

    /// `entity_type` in payloads, PascalCase like Moneybird's "SalesInvoice".
    pub fn entity_type(self) -> &'static str {
        match self {
            EntityKind::Customer => "Customer",
            EntityKind::Invoice => "Invoice",
            EntityKind::Quotation => "Quotation",
            EntityKind::Expense => "Expense",
            EntityKind::RecurringInvoice => "RecurringInvoice",
        }
    }

    /// The category, which is also the prefix of every event name of this kind.
    pub const fn category(self) -> &'static str {
        match self {
            EntityKind::Customer => "customer",
            EntityKind::Invoice => "invoice",
            EntityKind::Quotation => "quotation",
            EntityKind::Expense => "expense",
            EntityKind::RecurringInvoice => "recurring_invoice",
        }
    }

    /// The SQL function that builds this kind's JSON from its id.
    pub fn json_function(self) -> &'static str {
        match self {
            EntityKind::Customer => "billhook.customer_json",
            EntityKind::Invoice => "billhook.invoice_json",
            EntityKind::Quotation => "billhook.quotation_json",
            EntityKind::Expense => "billhook.expense_json",
            EntityKind::RecurringInvoice => "billhook.recurring_invoice_json",
        }
    }

    /// The SQL function that builds this kind's JSON for many ids at once (0.9.0 and later).
    pub fn entities_function(self) -> &'static str {
        match self {
            EntityKind::Customer => "billhook.customer_entities",
            EntityKind::Invoice => "billhook.invoice_entities",
            EntityKind::Quotation => "billhook.quotation_entities",
            EntityKind::Expense => "billhook.expense_entities",
            EntityKind::RecurringInvoice => "billhook.recurring_invoice_entities",
        }
    }

    pub fn from_entity_type(name: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|kind| kind.entity_type() == name)
    }

    /// The billhook table whose row changes are this kind's events, and the table of its lines
    /// with the column naming their parent. Recurring invoices have none: only the scheduler
    /// emits their events.
    fn tables(self) -> Option<(&'static str, Option<(&'static str, &'static str)>)> {
        match self {
            EntityKind::Customer => Some(("customers", None)),
            EntityKind::Invoice => Some(("invoices", Some(("invoice_lines", "invoice_id")))),
            EntityKind::Quotation => Some(("quotations", Some(("quotation_lines", "quotation_id")))),
            EntityKind::Expense => Some(("expenses", None)),
            EntityKind::RecurringInvoice => None,
        }
    }

    /// Whether a row trigger on billhook table `table` may record changes of this kind, through
    /// the parent key `parent_column` for a lines table.
    pub fn is_recorded_from(self, table: &str, parent_column: Option<&str>) -> bool {
        event_tables().any(|t| t.kind == self && t.table == table && t.parent_column == parent_column)
    }

    /// Whether the row carries a `state` column.
    pub fn has_state(self) -> bool {
        !matches!(self, EntityKind::Customer)
    }

    /// Whether the row carries a `sent_at` column (sending emits `<category>.sent`).
    pub fn has_sent_at(self) -> bool {
        matches!(self, EntityKind::Invoice | EntityKind::Quotation)
    }

    /// The event for a row change of this kind, if the catalog has one. Quotations have no
    /// `quotation.deleted` and recurring invoices emit only schedule events.
    pub fn row_event(self, change: RowEvent) -> Option<&'static str> {
        let suffix = match change {
            RowEvent::Created => "created",
            RowEvent::Updated => "updated",
            RowEvent::Deleted => "deleted",
        };
        EVENTS
            .iter()
            .find(|e| e.name.strip_prefix(self.category()).and_then(|rest| rest.strip_prefix('.')) == Some(suffix))
            .map(|e| e.name)
    }

    /// The event emitted when an entity of this kind moves into `state`.
    pub fn state_event(self, state: &str) -> Option<&'static str> {
        let event = match (self, state) {
            (EntityKind::Invoice, "paid") => "invoice.paid",
            (EntityKind::Invoice, "late") => "invoice.overdue",
            (EntityKind::Invoice, "cancelled") => "invoice.cancelled",
            (EntityKind::Quotation, "accepted") => "quotation.accepted",
            (EntityKind::Quotation, "rejected") => "quotation.rejected",
            (EntityKind::Quotation, "expired") => "quotation.expired",
            (EntityKind::Quotation, "billed") => "quotation.converted",
            (EntityKind::Expense, "approved") => "expense.approved",
            (EntityKind::Expense, "paid") => "expense.paid",
            _ => return None,
        };
        Some(event)
    }

    /// The event emitted when `sent_at` is set to a new value.
    pub fn sent_event(self) -> Option<&'static str> {
        match self {
            EntityKind::Invoice => Some("invoice.sent"),
            EntityKind::Quotation => Some("quotation.sent"),
            _ => None,
        }
    }
}

/// A billhook table whose row changes are events of `kind`; schema.sql attaches the triggers to
/// these tables (through `billhook.event_tables()`), and the triggers accept no others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTable {
    pub table: &'static str,
    pub kind: EntityKind,
    /// For a lines table, the column naming the entity the line belongs to.
    pub parent_column: Option<&'static str>,
}

impl EventTable {
    /// Whether deleting a row is an event of its own (a deleted line is an update of its entity).
    pub fn deletion_is_event(&self) -> bool {
        self.parent_column.is_none() && self.kind.row_event(RowEvent::Deleted).is_some()
    }
}

/// Every event table, each kind's table before its lines table.
pub fn event_tables() -> impl Iterator<Item = EventTable> {
    EntityKind::ALL.into_iter().flat_map(|kind| {
        let tables = kind.tables();
        let entities = tables.map(|(table, _)| EventTable { table, kind, parent_column: None });
        let lines = tables.and_then(|(_, lines)| lines).map(|(table, column)| EventTable {
            table,
            kind,
            parent_column: Some(column),
        });
        entities.into_iter().chain(lines)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowEvent {
    Created,
    Updated,
    Deleted,
}

pub struct EventType {
    pub name: &'static str,
    pub kind: EntityKind,
    pub description: &'static str,
}

impl EventType {
    pub fn category(&self) -> &'static str {
        self.kind.category()
    }
}

const fn event(name: &'static str, kind: EntityKind, description: &'static str) -> EventType {
    EventType { name, kind, description }
}

/// The 25 events of the catalog, in the order the reference lists them.
pub const EVENTS: [EventType; 25] = [
    event("invoice.created", EntityKind::Invoice, "A new invoice is created"),
    event("invoice.updated", EntityKind::Invoice, "An invoice is modified"),
    event("invoice.sent", EntityKind::Invoice, "An invoice is emailed to the customer"),
    event("invoice.paid", EntityKind::Invoice, "An invoice is marked as paid"),
    event("invoice.overdue", EntityKind::Invoice, "An invoice passes its due date"),
    event("invoice.cancelled", EntityKind::Invoice, "An invoice is cancelled"),
    event("invoice.deleted", EntityKind::Invoice, "An invoice is deleted"),
    event("quotation.created", EntityKind::Quotation, "A new quotation is created"),
    event("quotation.updated", EntityKind::Quotation, "A quotation is modified"),
    event("quotation.sent", EntityKind::Quotation, "A quotation is emailed to the customer"),
    event("quotation.accepted", EntityKind::Quotation, "A customer accepts the quotation"),
    event("quotation.rejected", EntityKind::Quotation, "A customer rejects the quotation"),
    event("quotation.expired", EntityKind::Quotation, "A quotation passes its valid_until date"),
    event("quotation.converted", EntityKind::Quotation, "A quotation is converted to an invoice"),
    event("customer.created", EntityKind::Customer, "A new customer is created"),
    event("customer.updated", EntityKind::Customer, "A customer's details are updated"),
    event("customer.deleted", EntityKind::Customer, "A customer is deleted"),
    event("expense.created", EntityKind::Expense, "A new expense is recorded"),
    event("expense.updated", EntityKind::Expense, "An expense is modified"),
    event("expense.approved", EntityKind::Expense, "An expense is approved"),
    event("expense.paid", EntityKind::Expense, "An expense is marked as paid"),
    event("expense.deleted", EntityKind::Expense, "An expense is deleted"),
    event(
        "recurring_invoice.generated",
        EntityKind::RecurringInvoice,
        "A new invoice is generated from a recurring schedule",
    ),
    event("recurring_invoice.failed", EntityKind::RecurringInvoice, "A recurring invoice generation fails"),
    event("recurring_invoice.completed", EntityKind::RecurringInvoice, "A recurring invoice schedule reaches its end"),
];

/// The category of the events billhook's worker emits about webhooks and deliveries themselves, like
/// Svix's operational webhooks. No commit writes them, `*` does not take them in (name the
/// category or the events), and no push about a webhook goes to that webhook.
pub const OPERATIONS: &str = "operations";

/// An operational event, about a webhook (entity type `Webhook`) or one of its deliveries
/// (`Delivery`): billhook.emit_operations writes them.
pub struct Operation {
    pub name: &'static str,
    pub entity_type: &'static str,
    pub description: &'static str,
}

pub const OPERATION_EVENTS: [Operation; 3] = [
    Operation {
        name: "webhook.failing",
        entity_type: "Webhook",
        description: "A webhook's pushes failed billhook.failing_after_failures times in a row",
    },
    Operation {
        name: "webhook.disabled",
        entity_type: "Webhook",
        description: "billhook disabled a webhook: its pushes failed for days, or its endpoint answered 410 Gone",
    },
    Operation {
        name: "delivery.exhausted",
        entity_type: "Delivery",
        description: "A push failed its last retry: the delivery is failed",
    },
];

/// Whether `name` is an operational event.
pub fn is_operation(name: &str) -> bool {
    OPERATION_EVENTS.iter().any(|o| o.name == name)
}

/// The categories a subscription may name, one per entity kind, in catalog order.
pub const CATEGORIES: [&str; EntityKind::ALL.len()] = {
    let mut categories = [""; EntityKind::ALL.len()];
    let mut i = 0;
    while i < categories.len() {
        categories[i] = EntityKind::ALL[i].category();
        i += 1;
    }
    categories
};

/// What a webhook without chosen events receives: Moneybird's "old implementation", notifications
/// after state changes of invoices.
pub const DEFAULT_SUBSCRIPTION: [&str; 4] = ["invoice.sent", "invoice.paid", "invoice.overdue", "invoice.cancelled"];

/// The catalog's name for `event` if it is an event of `kind`.
pub fn event_of(kind: EntityKind, event: &str) -> Option<&'static str> {
    EVENTS.iter().find(|e| e.name == event && e.kind == kind).map(|e| e.name)
}

/// Whether `name` is an event of the catalog.
pub fn is_event(name: &str) -> bool {
    EVENTS.iter().any(|e| e.name == name) || is_operation(name)
}

/// The first words of the operational events' names: an event type of such a category would take
/// an operational event's name (a tracked table emitting `delivery.exhausted`, say).
pub fn operation_prefixes() -> impl Iterator<Item = &'static str> {
    OPERATION_EVENTS.iter().filter_map(|o| o.name.split_once('.')).map(|(prefix, _)| prefix)
}

/// A set of catalog events, one bit per entry of EVENTS: the worker publishes the events some
/// enabled webhook subscribes to, so commits of other events need not wake it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSet(u32);

const _: () = assert!(EVENTS.len() <= 32, "EventSet has a bit per event");

impl EventSet {
    /// Every event; also what an unknown name stands for, so nothing is missed.
    pub const ALL: EventSet = EventSet(u32::MAX);

    pub fn of<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> EventSet {
        names.into_iter().fold(EventSet(0), |set, name| EventSet(set.0 | bit(name.as_ref())))
    }

    pub fn intersects(self, other: EventSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn from_bits(bits: u32) -> EventSet {
        EventSet(bits)
    }
}

/// An operational event is written by the worker itself, never by a commit: no bit.
fn bit(name: &str) -> u32 {
    if is_operation(name) {
        return 0;
    }
    EVENTS.iter().position(|e| e.name == name).map_or(u32::MAX, |i| 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_set_holds_its_events_and_takes_unknown_names_for_all() {
        let set = EventSet::of(["invoice.paid", "customer.created"]);
        assert!(set.intersects(EventSet::of(["invoice.paid", "invoice.sent"])));
        assert!(set.intersects(EventSet::of(["customer.created"])));
        assert!(!set.intersects(EventSet::of(["invoice.created", "recurring_invoice.completed"])));
        assert!(!EventSet::of(Vec::<&str>::new()).intersects(EventSet::ALL));
        assert_eq!(EventSet::of(["no.such"]), EventSet::ALL);
        assert_eq!(EventSet::from_bits(set.bits()), set);
        assert!(EVENTS.iter().all(|e| EventSet::of([e.name]).bits().count_ones() == 1));
    }

    #[test]
    fn catalog_has_25_events_in_5_categories() {
        assert_eq!(EVENTS.len(), 25);
        let count = |c: &str| EVENTS.iter().filter(|e| e.category() == c).count();
        assert_eq!(CATEGORIES.map(count), [7, 7, 3, 5, 3], "invoice, quotation, customer, expense, recurring_invoice");
        for e in EVENTS {
            assert!(e.name.starts_with(&format!("{}.", e.category())), "{}", e.name);
        }
    }

    #[test]
    fn row_events_follow_the_catalog() {
        assert_eq!(EntityKind::Invoice.row_event(RowEvent::Deleted), Some("invoice.deleted"));
        assert_eq!(EntityKind::Quotation.row_event(RowEvent::Deleted), None);
        assert_eq!(EntityKind::Quotation.row_event(RowEvent::Updated), Some("quotation.updated"));
        assert_eq!(EntityKind::Customer.row_event(RowEvent::Created), Some("customer.created"));
        assert_eq!(EntityKind::RecurringInvoice.row_event(RowEvent::Created), None);
    }

    #[test]
    fn every_lifecycle_event_is_in_the_catalog() {
        let states = ["paid", "late", "cancelled", "accepted", "rejected", "expired", "billed", "approved"];
        for kind in EntityKind::ALL {
            let names = states.iter().filter_map(|s| kind.state_event(s)).chain(kind.sent_event());
            for name in names {
                assert!(EVENTS.iter().any(|e| e.name == name && e.kind == kind), "{name}");
            }
        }
    }

    #[test]
    fn changes_are_recorded_only_from_the_kinds_own_tables() {
        assert!(EntityKind::Invoice.is_recorded_from("invoices", None));
        assert!(EntityKind::Invoice.is_recorded_from("invoice_lines", Some("invoice_id")));
        assert!(!EntityKind::Invoice.is_recorded_from("invoice_lines", None));
        assert!(!EntityKind::Invoice.is_recorded_from("invoice_lines", Some("id")));
        assert!(!EntityKind::Invoice.is_recorded_from("customers", None));
        assert!(!EntityKind::Customer.is_recorded_from("invoices", None));
        assert!(!EntityKind::Invoice.is_recorded_from("t", None));
        assert!(!EntityKind::RecurringInvoice.is_recorded_from("recurring_invoices", None));
    }

    #[test]
    fn deletions_are_events_of_customers_invoices_and_expenses_only() {
        let deleted: Vec<&str> = event_tables().filter(|t| t.deletion_is_event()).map(|t| t.table).collect();
        assert_eq!(deleted, ["invoices", "customers", "expenses"]);
        assert_eq!(event_tables().count(), 6);
    }

    #[test]
    fn event_of_checks_the_kind() {
        assert_eq!(
            event_of(EntityKind::RecurringInvoice, "recurring_invoice.failed"),
            Some("recurring_invoice.failed")
        );
        assert_eq!(event_of(EntityKind::Invoice, "recurring_invoice.failed"), None);
        assert_eq!(event_of(EntityKind::Invoice, "invoice.exploded"), None);
    }
}
