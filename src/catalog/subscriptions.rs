//! Subscription rules: what a webhook's `enabled_events` (names, categories, `*`, Moneybird's names)
//! subscribe it to, and which event types may be registered besides the built-in ones. Pure: no
//! Postgres calls, so plain unit tests cover it.

use super::{
    moneybird_names, operation_prefixes, CATEGORIES, DEFAULT_SUBSCRIPTION, EVENTS, OPERATIONS, OPERATION_EVENTS,
};

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
    /// (moneybird_names.rs), since one billhook event has several Moneybird names (`webhooks.exact_events`).
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
    let mut catalog: Vec<(&str, &str)> = EVENTS
        .iter()
        .map(|e| (e.name, e.category()))
        .chain(OPERATION_EVENTS.iter().map(|o| (o.name, OPERATIONS)))
        .collect();
    for r in registered {
        if !catalog.iter().any(|(name, _)| *name == r.name) {
            catalog.push((r.name.as_str(), r.category.as_str()));
        }
    }
    let mut catalog_entries = Vec::new();
    let mut moneybird_events = if entries.is_empty() { moneybird_names::legacy_default() } else { Vec::new() };
    for entry in entries {
        let entry = entry.as_ref();
        if entry == WILDCARD || catalog.iter().any(|(name, category)| entry == *name || entry == *category) {
            catalog_entries.push(entry);
        } else {
            moneybird_events.extend(moneybird_names::names_for(entry).ok_or_else(|| UnknownEvent(entry.to_string()))?);
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
        || moneybird_names::names_for(category).is_some()
    {
        return Err(Unregistrable::TakenCategory);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{is_event, is_operation, EventSet};

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
    fn a_built_in_event_listed_among_the_registered_ones_is_subscribed_to_once() {
        let registered = [
            Registered { name: "delivery.exhausted".into(), category: "operations".into() },
            Registered { name: "invoice.paid".into(), category: "invoice".into() },
        ];
        let events = |entries: &[&str]| subscription(entries, false, &registered).unwrap().events;
        assert_eq!(events(&["operations"]), ["webhook.failing", "webhook.disabled", "delivery.exhausted"]);
        assert_eq!(events(&["invoice.paid", "invoice"]).iter().filter(|e| *e == "invoice.paid").count(), 1);
        assert_eq!(events(&["*", "operations"]).len(), 28);
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
