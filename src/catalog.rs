//! The event catalog and subscription rules. Pure: no Postgres calls, so plain unit tests cover it.
//!
//! The catalog here is the single source of the 25 events of the invoicing schema and the 3
//! operational events: `billhook.event_types` is filled from it at install time (see
//! `functions::event_catalog`).

use crate::moneybird;

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

/// Subscribes to every event.
pub const WILDCARD: &str = "*";

/// An entry of `enabled_events` that is no event, category or wildcard.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownEvent(pub String);

/// What a webhook receives, from its `enabled_events` (exact names, category names, `*`, and
/// Moneybird's event names and top-level names; empty means the default of its payload format).
#[derive(Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The events it receives pushes of, the built-in ones in catalog order, then registered ones
    /// (`webhooks.subscribed_events`).
    pub events: Vec<String>,
    /// When it names Moneybird events: the names a push of it must have, billhook's or Moneybird's
    /// (moneybird.rs), since one billhook event has several Moneybird names (`webhooks.exact_events`).
    pub exact: Option<Vec<String>>,
}

/// An event type registered besides the built-in ones (`billhook.register_event_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub category: String,
}

/// The subscription of a webhook with these `enabled_events`; `moneybird_format` gives an empty
/// list Moneybird's legacy default instead of billhook's; `registered` are the event types
/// registered besides the built-in ones, which names, categories and `*` take in too.
pub fn subscription<S: AsRef<str>>(
    entries: &[S],
    moneybird_format: bool,
    registered: &[Registered],
) -> Result<Subscription, UnknownEvent> {
    let owned = |names: Vec<&str>| names.into_iter().map(str::to_string).collect::<Vec<String>>();
    if entries.is_empty() && !moneybird_format {
        return Ok(Subscription { events: owned(DEFAULT_SUBSCRIPTION.to_vec()), exact: None });
    }
    let catalog: Vec<(&str, &str)> = EVENTS
        .iter()
        .map(|e| (e.name, e.category()))
        .chain(OPERATION_EVENTS.iter().map(|o| (o.name, OPERATIONS)))
        .chain(registered.iter().map(|r| (r.name.as_str(), r.category.as_str())))
        .collect();
    let mut catalog_entries = Vec::new();
    let mut moneybird_events = if entries.is_empty() { moneybird::legacy_default() } else { Vec::new() };
    for entry in entries {
        let entry = entry.as_ref();
        if entry == WILDCARD || catalog.iter().any(|(name, category)| entry == *name || entry == *category) {
            catalog_entries.push(entry);
        } else {
            moneybird_events.extend(moneybird::names_for(entry).ok_or_else(|| UnknownEvent(entry.to_string()))?);
        }
    }
    let named = |(name, category): &(&str, &str)| {
        catalog_entries
            .iter()
            .any(|entry| (*entry == WILDCARD && *category != OPERATIONS) || entry == category || entry == name)
    };
    let named_events: Vec<&str> = catalog.iter().filter(|e| named(e)).map(|(name, _)| *name).collect();
    if moneybird_events.is_empty() {
        return Ok(Subscription { events: owned(named_events), exact: None });
    }
    let events = catalog
        .iter()
        .filter(|e| named(e) || moneybird_events.iter().any(|m| m.event == e.0))
        .map(|(name, _)| *name)
        .collect();
    let mut exact = named_events;
    for m in moneybird_events {
        if !exact.contains(&m.name) {
            exact.push(m.name);
        }
    }
    Ok(Subscription { events: owned(events), exact: Some(owned(exact)) })
}

/// Why a name and category cannot be registered as an event type.
#[derive(Debug, PartialEq, Eq)]
pub enum Unregistrable {
    /// Not `<category>.<action>` in lower case letters, digits and underscores.
    BadName,
    /// A category that is built in, the first word of an operational event's name (`webhook`,
    /// `delivery`), or a Moneybird top-level name.
    TakenCategory,
}

/// Whether `name` in `category` may be registered: `<category>.<action>` like the built-in
/// names, in a category of its own (a built-in category or Moneybird name would change what
/// existing subscriptions mean).
pub fn check_registrable(name: &str, category: &str) -> Result<(), Unregistrable> {
    let word = |w: &str| {
        w.len() <= 63
            && w.starts_with(|c: char| c.is_ascii_lowercase())
            && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    match name.split_once('.') {
        Some((prefix, action)) if prefix == category && word(category) && word(action) => {}
        _ => return Err(Unregistrable::BadName),
    }
    if CATEGORIES.contains(&category)
        || category == OPERATIONS
        || operation_prefixes().any(|prefix| prefix == category)
        || moneybird::names_for(category).is_some()
    {
        return Err(Unregistrable::TakenCategory);
    }
    Ok(())
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

    fn events<S: AsRef<str>>(entries: &[S]) -> Vec<String> {
        subscription(entries, false, &[]).unwrap().events
    }

    #[test]
    fn an_empty_subscription_is_the_default_of_the_format() {
        let none: [&str; 0] = [];
        let default = subscription(&none, false, &[]).unwrap();
        assert_eq!((default.events, default.exact), (DEFAULT_SUBSCRIPTION.map(String::from).to_vec(), None));
        let legacy = subscription(&none, true, &[]).unwrap();
        assert_eq!(legacy.events, ["invoice.updated", "invoice.paid", "invoice.overdue", "invoice.cancelled"]);
        let exact = legacy.exact.unwrap();
        assert_eq!(exact.len(), 9);
        assert!(exact.iter().all(|name| name.starts_with("sales_invoice_state_changed_to_")));
    }

    #[test]
    fn subscription_accepts_names_categories_and_wildcard() {
        assert_eq!(events(&["invoice.paid"]), vec!["invoice.paid"]);
        assert_eq!(
            events(&["customer", "invoice.paid"]),
            vec!["invoice.paid", "customer.created", "customer.updated", "customer.deleted"]
        );
        assert_eq!(events(&["*"]).len(), 25);
        assert_eq!(events(&["*", "invoice"]).len(), 25);
        assert_eq!(subscription(&["*"], true, &[]).unwrap().exact, None, "no Moneybird names: no exact list");
    }

    #[test]
    fn operational_events_are_named_by_category_or_name_never_by_the_wildcard_and_wake_nobody() {
        assert_eq!(events(&["operations"]), vec!["webhook.failing", "webhook.disabled", "delivery.exhausted"]);
        assert_eq!(events(&["invoice.paid", "delivery.exhausted"]), vec!["invoice.paid", "delivery.exhausted"]);
        assert!(!events(&["*"]).iter().any(|name| is_operation(name)));
        assert_eq!(events(&["*", "operations"]).len(), 28);
        assert!(is_event("webhook.disabled"));
        assert_eq!(check_registrable("operations.restarted", "operations"), Err(Unregistrable::TakenCategory));
        assert_eq!(check_registrable("delivery.exhausted", "delivery"), Err(Unregistrable::TakenCategory));
        assert_eq!(check_registrable("webhook.pinged", "webhook"), Err(Unregistrable::TakenCategory));
        // A commit never writes them: a subscription to them alone lets commits leave the worker be.
        assert!(!EventSet::of(["webhook.failing", "delivery.exhausted"]).intersects(EventSet::ALL));
        assert!(EventSet::of(["webhook.failing", "invoice.paid"]).intersects(EventSet::of(["invoice.paid"])));
    }

    #[test]
    fn moneybird_names_subscribe_to_their_events_and_only_to_those_names() {
        let mixed =
            subscription(&["invoice.paid", "sales_invoice_state_changed_to_open", "contact"], false, &[]).unwrap();
        assert_eq!(
            mixed.events,
            ["invoice.updated", "invoice.paid", "customer.created", "customer.updated", "customer.deleted"]
        );
        assert_eq!(
            mixed.exact.unwrap(),
            [
                "invoice.paid",
                "sales_invoice_state_changed_to_open",
                "contact_created",
                "contact_changed",
                "contact_destroyed"
            ]
        );
    }

    #[test]
    fn subscription_rejects_unknown_entries_by_name() {
        let err = subscription(&["invoice.paid", "invoice.payed"], false, &[]).unwrap_err();
        assert_eq!(err, UnknownEvent("invoice.payed".to_string()));
        assert!(subscription(&["Invoice"], false, &[]).is_err(), "names are case-sensitive");
        assert!(subscription(&["estimate_destroyed"], true, &[]).is_err(), "billhook has no deleted quotations");
    }

    #[test]
    fn registered_types_join_names_categories_and_the_wildcard() {
        let registered = [
            Registered { name: "order.created".into(), category: "order".into() },
            Registered { name: "order.shipped".into(), category: "order".into() },
        ];
        let events = |entries: &[&str]| subscription(entries, false, &registered).unwrap().events;
        assert_eq!(events(&["order"]), ["order.created", "order.shipped"]);
        assert_eq!(events(&["invoice.paid", "order.shipped"]), ["invoice.paid", "order.shipped"]);
        assert_eq!(events(&["*"]).len(), 27);
        assert!(subscription(&["order"], false, &[]).is_err(), "not registered here");
    }

    #[test]
    fn only_new_categories_and_well_formed_names_are_registrable() {
        assert_eq!(check_registrable("order.created", "order"), Ok(()));
        assert_eq!(check_registrable("order.created_2", "order"), Ok(()));
        for (name, category) in [
            ("order", "order"),
            ("Order.created", "Order"),
            ("order.created", "orders"),
            ("order.", "order"),
            ("order.a.b", "order"),
            ("1order.x", "1order"),
        ] {
            assert_eq!(check_registrable(name, category), Err(Unregistrable::BadName), "{name}");
        }
        assert_eq!(check_registrable("invoice.archived", "invoice"), Err(Unregistrable::TakenCategory));
        assert_eq!(check_registrable("estimate.x", "estimate"), Err(Unregistrable::TakenCategory));
    }
}
