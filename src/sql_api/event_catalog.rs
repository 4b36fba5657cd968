//! The event catalog and subscriptions in SQL: the rows `billhook.event_types` and
//! `billhook.moneybird_events` are filled from, the push schemas, and the functions behind
//! `webhooks.subscribed_events` and `exact_events` and the check on `events.event_type`.

use pgrx::prelude::*;

use crate::catalog::moneybird_names::{self, MONEYBIRD_EVENTS};
use crate::catalog::subscriptions::{self, Registered, Subscription};
use crate::catalog::{self, push_schemas, EVENTS, OPERATION_EVENTS};
use crate::delivering::push::envelope::PayloadFormat;
use crate::error::{BillhookError, OrReport};
use crate::jsonb::JsonbText;

/// The events a webhook with these `enabled_events` and this payload format receives, registered
/// event types included. Raises 22023 naming the first unknown entry. The webhooks table's trigger
/// keeps `subscribed_events` with it, so every way of writing a webhook is validated the same way.
#[pg_extern(stable, parallel_safe, name = "expand_subscription")]
fn expand_format_subscription(enabled_events: Vec<Option<String>>, payload_format: &str) -> Vec<String> {
    subscription_of(enabled_events, payload_format, &registered_event_types()).events
}

/// The same for billhook's format and the built-in events: the generated column of an install
/// older than 0.6.0 calls it until the install is updated.
#[pg_extern(immutable, parallel_safe)]
fn expand_subscription(enabled_events: Vec<Option<String>>) -> Vec<String> {
    subscription_of(enabled_events, "billhook", &[]).events
}

/// The names a push to such a webhook must have (`exact_events`), billhook's or Moneybird's; NULL
/// when its `enabled_events` name no Moneybird event, and every push of its events goes.
#[pg_extern(stable, parallel_safe)]
fn exact_subscription(enabled_events: Vec<Option<String>>, payload_format: &str) -> Option<Vec<String>> {
    subscription_of(enabled_events, payload_format, &registered_event_types()).exact
}

fn subscription_of(
    enabled_events: Vec<Option<String>>,
    payload_format: &str,
    registered: &[Registered],
) -> Subscription {
    let entries: Vec<String> = enabled_events
        .into_iter()
        .map(|e| e.ok_or_else(|| BillhookError::UnknownEvent("NULL".to_string())))
        .collect::<Result<_, _>>()
        .or_report();
    let moneybird = PayloadFormat::parse(payload_format) == Some(PayloadFormat::Moneybird);
    subscriptions::subscription(&entries, moneybird, registered).or_report()
}

/// The event types of `billhook.event_types` besides the built-in ones (the catalog's events and
/// operational events), by name.
fn registered_event_types() -> Vec<Registered> {
    let built_in: Vec<&str> = EVENTS.iter().map(|e| e.name).chain(OPERATION_EVENTS.iter().map(|o| o.name)).collect();
    Spi::connect(|client| {
        client
            .select(
                "SELECT name, category FROM billhook.event_types WHERE name <> ALL ($1) ORDER BY name",
                None,
                &[built_in.into()],
            )?
            .map(|row| {
                Ok(Registered {
                    name: row.get::<String>(1)?.unwrap_or_default(),
                    category: row.get::<String>(2)?.unwrap_or_default(),
                })
            })
            .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap_or_else(|e| error!("billhook could not read its event types: {e}"))
}

/// The Moneybird name of a push of `event_type` about `entity`, given the entity's state at commit
/// and when its transaction began (catalog/moneybird_names.rs); NULL for a name that is not billhook's.
/// The entity is read only for the names that depend on it; one that cannot be read then is 22023.
#[pg_extern(immutable, parallel_safe)]
fn moneybird_event(
    event_type: Option<&str>,
    state: Option<&str>,
    previous_state: Option<&str>,
    entity: Option<JsonbText>,
) -> Option<&'static str> {
    let event_type = event_type?;
    let entity = match entity.filter(|_| moneybird_names::reads_entity(event_type)) {
        Some(JsonbText(text)) => serde_json::from_str(&text)
            .map_err(|e| BillhookError::UnreadableJson { what: "entity", reason: e.to_string() })
            .or_report(),
        None => serde_json::Value::Null,
    };
    moneybird_names::event_name(event_type, state, previous_state, &entity)
}

/// Moneybird's names of billhook's events, in resolution order; `billhook.moneybird_events` is
/// filled from it.
#[pg_extern(immutable, parallel_safe)]
fn moneybird_catalog() -> TableIterator<
    'static,
    (
        name!(position, i32),
        name!(moneybird_event, &'static str),
        name!(event_type, &'static str),
        name!(condition, Option<String>),
        name!(moneybird_entity_type, &'static str),
    ),
> {
    TableIterator::new(MONEYBIRD_EVENTS.iter().enumerate().map(|(position, m)| {
        let kind = EVENTS.iter().find(|e| e.name == m.event).map(|e| e.kind).expect("Moneybird names billhook events");
        (position as i32 + 1, m.name, m.event, m.condition.describe(), moneybird_names::entity_type(kind))
    }))
}

/// The event catalog as rows, the operational events last; `billhook.event_types` is filled from it.
#[pg_extern(immutable, parallel_safe)]
fn event_catalog(
) -> TableIterator<'static, (name!(name, &'static str), name!(category, &'static str), name!(description, &'static str))>
{
    let operations = catalog::OPERATION_EVENTS.iter().map(|o| (o.name, catalog::OPERATIONS, o.description));
    TableIterator::new(EVENTS.iter().map(|e| (e.name, e.category(), e.description)).chain(operations))
}

/// The JSON Schema of a push of event type `name` in billhook's payload format (push_schemas.rs): the
/// generated column `billhook.event_types.schema`.
#[pg_extern(immutable, strict, parallel_safe)]
fn event_schema(name: &str) -> pgrx::JsonB {
    pgrx::JsonB(push_schemas::event_schema(name))
}

/// The tables whose row changes are events, from the catalog: schema.sql attaches the event
/// triggers to exactly these.
#[pg_extern(immutable, parallel_safe)]
fn event_tables() -> TableIterator<
    'static,
    (
        name!(table_name, &'static str),
        name!(entity_type, &'static str),
        name!(parent_column, Option<&'static str>),
        name!(deletion_is_event, bool),
    ),
> {
    TableIterator::new(
        catalog::event_tables().map(|t| (t.table, t.kind.entity_type(), t.parent_column, t.deletion_is_event())),
    )
}

/// Whether `name` is an event type, built in or registered (the check on `events.event_type`: the
/// built-in ones need no lookup, which is cheaper on the commit path than a foreign key). A replica
/// session (pg_restore as docs/operations.md says, logical replication) brings events from another billhook and
/// may bring them before the registered types: like a foreign key, the check trusts it.
#[pg_extern(stable, parallel_safe)]
fn is_event_type(name: &str) -> bool {
    let replica = unsafe { pg_sys::SessionReplicationRole } == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32;
    catalog::is_event(name)
        || replica
        || Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM billhook.event_types WHERE name = $1)",
            &[name.into()],
        )
        .unwrap_or_else(|e| error!("billhook could not read its event types: {e}"))
        .unwrap_or(false)
}

/// True if `name` in `category` may be registered as an event type (catalog/subscriptions.rs); raises 22023
/// naming them otherwise. Backs billhook.register_event_type.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_event_type(name: &str, category: &str) -> bool {
    subscriptions::check_registrable(name, category)
        .map_err(|reason| BillhookError::InvalidEventType {
            name: name.to_string(),
            category: category.to_string(),
            reason,
        })
        .or_report();
    true
}
