//! SQL functions implemented in Rust. The webhook management functions themselves are SQL
//! (`sql/api.sql`); these are the rules they and the tables' constraints rely on.

use pgrx::prelude::*;

use crate::catalog::{self, EntityKind, EVENTS};
use crate::credentials;
use crate::envelope::PayloadFormat;
use crate::error::{BillhookError, OrReport};
use crate::jsonb::{DetoastedSize, JsonbText};
use crate::moneybird::{self, MONEYBIRD_EVENTS};
use crate::target;

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
    registered: &[catalog::Registered],
) -> catalog::Subscription {
    let entries: Vec<String> = enabled_events
        .into_iter()
        .map(|e| e.ok_or_else(|| BillhookError::UnknownEvent("NULL".to_string())))
        .collect::<Result<_, _>>()
        .or_report();
    let moneybird = PayloadFormat::parse(payload_format) == Some(PayloadFormat::Moneybird);
    catalog::subscription(&entries, moneybird, registered).or_report()
}

/// The event types of `billhook.event_types` besides the built-in ones, by name.
fn registered_event_types() -> Vec<catalog::Registered> {
    let built_in: Vec<&str> = EVENTS.iter().map(|e| e.name).collect();
    Spi::connect(|client| {
        client
            .select(
                "SELECT name, category FROM billhook.event_types WHERE name <> ALL ($1) ORDER BY name",
                None,
                &[built_in.into()],
            )?
            .map(|row| {
                Ok(catalog::Registered {
                    name: row.get::<String>(1)?.unwrap_or_default(),
                    category: row.get::<String>(2)?.unwrap_or_default(),
                })
            })
            .collect::<pgrx::spi::Result<Vec<_>>>()
    })
    .unwrap_or_else(|e| error!("billhook could not read its event types: {e}"))
}

/// The Moneybird name of a push of `event_type` about `entity`, given the entity's state at commit
/// and when its transaction began (moneybird.rs); NULL for a name that is not billhook's.
/// The entity is read only for the names that depend on it; one that cannot be read then is 22023.
#[pg_extern(immutable, parallel_safe)]
fn moneybird_event(
    event_type: Option<&str>,
    state: Option<&str>,
    previous_state: Option<&str>,
    entity: Option<JsonbText>,
) -> Option<&'static str> {
    let event_type = event_type?;
    let entity = match entity.filter(|_| moneybird::reads_entity(event_type)) {
        Some(JsonbText(text)) => serde_json::from_str(&text)
            .map_err(|e| BillhookError::UnreadableJson { what: "entity", reason: e.to_string() })
            .or_report(),
        None => serde_json::Value::Null,
    };
    moneybird::event_name(event_type, state, previous_state, &entity)
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
        (position as i32 + 1, m.name, m.event, m.condition.describe(), moneybird::entity_type(kind))
    }))
}

/// The bytes a jsonb value takes once read (pg_column_size gives what it takes stored, which a
/// well-compressed value can make a hundred times smaller), without reading it.
#[pg_extern(immutable, parallel_safe, strict)]
fn detoasted_size(value: DetoastedSize) -> i64 {
    value.0
}

/// The URL as views and operational events show it: scheme, host and port (`target::shown_url`).
#[pg_extern(immutable, parallel_safe, strict)]
fn redact_url(url: &str) -> String {
    target::shown_url(url)
}

/// True for a URL billhook can deliver to; raises 22023 naming the URL and the reason otherwise.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_url(url: &str) -> bool {
    target::validate_url(url).or_report();
    true
}

#[pg_extern(volatile, parallel_safe)]
fn generate_token() -> String {
    credentials::new_token()
}

#[pg_extern(volatile, parallel_safe)]
fn generate_signing_secret() -> String {
    credentials::new_signing_secret()
}

#[pg_extern(volatile, parallel_safe)]
fn generate_signing_key() -> String {
    credentials::new_signing_key()
}

/// The `whpk_` public key of a `whsk_` signing key (the generated column `webhooks.public_key`);
/// 22023 for anything else.
#[pg_extern(immutable, strict, parallel_safe)]
fn ed25519_public_key(signing_key: &str) -> String {
    crate::sign::public_key(signing_key).ok_or(BillhookError::InvalidSigningKey).or_report()
}

/// The event catalog as rows, the operational events last; `billhook.event_types` is filled from it.
#[pg_extern(immutable, parallel_safe)]
fn event_catalog(
) -> TableIterator<'static, (name!(name, &'static str), name!(category, &'static str), name!(description, &'static str))>
{
    let operations = catalog::OPERATION_EVENTS.iter().map(|o| (o.name, catalog::OPERATIONS, o.description));
    TableIterator::new(EVENTS.iter().map(|e| (e.name, e.category(), e.description)).chain(operations))
}

/// The JSON Schema of a push of event type `name` in billhook's payload format (schemas.rs): the
/// generated column `billhook.event_types.schema`.
#[pg_extern(immutable, strict, parallel_safe)]
fn event_schema(name: &str) -> pgrx::JsonB {
    pgrx::JsonB(crate::schemas::event_schema(name))
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

/// Wakes the delivery worker when the current transaction commits, for functions that queue
/// deliveries themselves (redeliver, replay).
#[pg_extern(volatile, parallel_unsafe)]
fn wake_worker_at_commit() {
    crate::emit::wake_worker_at_commit();
}

/// Whether the delivery worker of this database runs, since when. database: this database if
/// billhook.databases names it, else the databases it names.
// pgrx takes the column names from the signature itself, so the type cannot be an alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(preloaded, bool),
        name!(running, bool),
        name!(pid, Option<i32>),
        name!(database, String),
        name!(started_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let served = crate::worker::this_databases_worker();
    let database = match served {
        Some(_) => crate::worker::current_database_name(),
        None => crate::gucs::databases().join(","),
    };
    let status = served.unwrap_or_default();
    TableIterator::once((
        crate::worker::is_preloaded(),
        status.pid.is_some(),
        status.pid,
        database,
        timestamp(status.started_at),
    ))
}

/// Every configured worker: each database of billhook.databases in order, each with its
/// billhook.workers members.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn workers() -> TableIterator<
    'static,
    (
        name!(database, String),
        name!(member, i32),
        name!(running, bool),
        name!(pid, Option<i32>),
        name!(started_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(starts, i64),
    ),
> {
    let databases = crate::gucs::databases();
    let rows: Vec<_> = crate::worker::Place::all(databases.len(), crate::gucs::workers())
        .map(|place| {
            let status = crate::worker::status_of(place);
            let database = databases[place.database].clone();
            let member = place.member as i32;
            (database, member, status.pid.is_some(), status.pid, timestamp(status.started_at), status.starts as i64)
        })
        .collect();
    TableIterator::new(rows)
}

fn timestamp(at: Option<i64>) -> Option<pgrx::datum::TimestampWithTimeZone> {
    at.and_then(|t| pgrx::datum::TimestampWithTimeZone::try_from(t).ok())
}

/// The registration check: a `webhook.verification` push with the webhook's headers, signed with
/// each key of `signing_secret` (space-separated `whsec_` secrets and `whsk_` keys, as
/// billhook.signing_keys gives them), that must be answered with 200. Raises 22023 naming the URL
/// (credentials redacted) and what came back otherwise. Runs in the calling session, with the worker's timeouts, address policy and TLS roots.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn verify_endpoint(
    webhook_id: i64,
    administration_id: i64,
    url: &str,
    token: &str,
    signing_secret: &str,
    enabled_events: Vec<Option<String>>,
    headers: JsonbText,
    checked_at: &str,
) -> bool {
    let headers = headers_of(&headers, url);
    registration_check(webhook_id, administration_id, url, token, signing_secret, enabled_events, headers, checked_at)
}

/// The registration check without headers. Not in a fresh install's SQL: the install scripts of
/// 0.1.0 to 0.3.0 bind billhook.check_endpoint to this symbol, and an install of those versions
/// runs on this library until it is updated.
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn check_endpoint(
    webhook_id: i64,
    administration_id: i64,
    url: &str,
    token: &str,
    signing_secret: &str,
    enabled_events: Vec<Option<String>>,
    checked_at: &str,
) -> bool {
    registration_check(
        webhook_id,
        administration_id,
        url,
        token,
        signing_secret,
        enabled_events,
        Vec::new(),
        checked_at,
    )
}

#[allow(clippy::too_many_arguments)]
fn registration_check(
    webhook_id: i64,
    administration_id: i64,
    url: &str,
    token: &str,
    signing_secret: &str,
    enabled_events: Vec<Option<String>>,
    headers: Vec<(String, String)>,
    checked_at: &str,
) -> bool {
    let entity = serde_json::json!({
        "id": webhook_id.to_string(),
        "url": target::redact_url(url),
        "enabled_events": enabled_events,
    });
    let entity = serde_json::value::to_raw_value(&entity).expect("JSON of strings serialises");
    let body = crate::envelope::Envelope {
        administration_id: administration_id.to_string(),
        webhook_id: webhook_id.to_string(),
        webhook_token: token,
        entity_type: "Webhook",
        entity_id: webhook_id.to_string(),
        state: None,
        action: "webhook.verification",
        event_id: None,
        occurred_at: checked_at,
        entity: &entity,
        previous_state: None,
    }
    .to_json(PayloadFormat::Billhook, crate::envelope::Payload::Full)
    .unwrap_or_else(|crate::envelope::Unbuildable(reason)| {
        BillhookError::EndpointCheckFailed { url: target::redact_url(url), answer: reason }.report()
    });
    let mut push = crate::http::Push::new(
        url,
        body,
        format!("verify-{webhook_id}-{}", crate::credentials::new_token()),
        signing_secret.split_whitespace().filter_map(crate::sign::SigningKey::parse).collect(),
    );
    push.headers.extend(headers);
    let outcome = crate::http::Client::new(&crate::gucs::http_settings()).send(&push);
    let answer = match (outcome.http_status, outcome.error) {
        (Some(200), _) => return true,
        (Some(status), _) => format!("answered HTTP {status}"),
        (None, Some(error)) => error,
        (None, None) => "did not answer".to_string(),
    };
    BillhookError::EndpointCheckFailed {
        url: target::redact_url(url),
        answer: target::redact_credentials(&answer, url),
    }
    .report()
}

/// True for a webhook's own settings (NULL: the global value); raises 22023 naming the setting and
/// its value otherwise, by the rules of the settings themselves. Backs a check on `webhooks`.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_settings(
    retry_schedule: Option<&str>,
    request_timeout_ms: Option<f64>,
    max_in_flight: Option<i32>,
    max_requests_per_second: Option<f64>,
) -> bool {
    use crate::webhook_settings as settings;
    if let Some(schedule) = retry_schedule {
        settings::parse_retry_schedule(schedule).or_report();
    }
    if let Some(milliseconds) = request_timeout_ms {
        settings::request_timeout(milliseconds).or_report();
    }
    if let Some(requests) = max_in_flight {
        settings::max_in_flight(requests).or_report();
    }
    if let Some(rate) = max_requests_per_second {
        settings::max_requests_per_second(rate).or_report();
    }
    true
}

/// The Prometheus text exposition of billhook's metrics (metrics.rs): per webhook the worker's
/// counters, its backlog and the age of its oldest pending delivery; the worker's state. Reads with
/// the caller's rights.
#[pg_extern(stable, parallel_safe)]
fn metrics() -> String {
    const WEBHOOKS: &str = "
        SELECT w.id, w.administration_id, w.enabled, w.consecutive_failures::bigint,
               (SELECT coalesce(jsonb_object_agg(c.counter, c.value), '{}')
                FROM billhook.delivery_counters AS c WHERE c.webhook_id = w.id)::text AS counters,
               pending.backlog, pending.oldest
        FROM billhook.webhooks AS w
        CROSS JOIN LATERAL (
            SELECT count(*) AS backlog, extract(epoch FROM now() - min(d.created_at))::float8 AS oldest
            FROM billhook.deliveries AS d WHERE d.webhook_id = w.id AND d.status = 'pending') AS pending";
    let webhooks = Spi::connect(|client| {
        client
            .select(WEBHOOKS, None, &[])?
            .map(|row| {
                let counters: String = row.get(5)?.unwrap_or_default();
                let webhook = crate::metrics::WebhookMetrics {
                    administration_id: row.get(2)?.unwrap_or_default(),
                    counters: serde_json::from_str(&counters).unwrap_or_default(),
                    enabled: row.get(3)?.unwrap_or_default(),
                    consecutive_failures: row.get(4)?.unwrap_or_default(),
                    backlog: row.get(6)?.unwrap_or_default(),
                    oldest_pending_seconds: row.get(7)?,
                };
                Ok((row.get::<i64>(1)?.unwrap_or_default(), webhook))
            })
            .collect::<Result<std::collections::BTreeMap<_, _>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("billhook could not read its metrics: {e}"));
    let status = crate::worker::this_databases_worker().unwrap_or_default();
    let worker = crate::metrics::WorkerMetrics {
        up: status.pid.is_some(),
        starts: status.starts as i64,
        started_at_seconds: status.started_at.map(crate::pg_time::unix_seconds),
    };
    crate::metrics::render(&webhooks, &worker)
}

/// True if `value` is one of the names the webhook option `option` takes (webhook_settings.rs);
/// raises 22023 naming it otherwise. Backs checks on `webhooks`.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_webhook_choice(option: &str, value: &str) -> bool {
    crate::webhook_settings::choice(option, value).or_report();
    true
}

/// True for headers a webhook with this URL may have (headers.rs); raises 22023 naming the bad
/// header otherwise. Backs a check on `webhooks`, so every way of writing one is validated.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_headers(headers: JsonbText, url: &str) -> bool {
    headers_of(&headers, url);
    true
}

/// The headers of a webhook with this URL, or 22023 naming the bad one.
fn headers_of(JsonbText(headers): &JsonbText, url: &str) -> Vec<(String, String)> {
    let headers: serde_json::Value = serde_json::from_str(headers)
        .map_err(|e| BillhookError::UnreadableJson { what: "headers", reason: e.to_string() })
        .or_report();
    crate::headers::parse_headers(&headers, target::basic_auth(url).1.is_some()).or_report()
}

/// Queues a catalog event with the entity's JSON as it is now; written at commit with the
/// transaction's other events. Used by the scheduler for the `recurring_invoice.*` events, which no
/// row change produces. Not executable by PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
fn emit_event(entity_type: &str, entity_id: i64, event: &str, entity: JsonbText) {
    let kind = EntityKind::from_entity_type(entity_type)
        .ok_or_else(|| BillhookError::UnknownEntityType(entity_type.to_string()))
        .or_report();
    let name = catalog::event_of(kind, event).ok_or_else(|| BillhookError::UnknownEvent(event.to_string())).or_report();
    crate::emit::emit(kind, entity_id, name, entity.0);
}

/// The Idempotency-Key of the push of event `event_id` to webhook `webhook_id` (idempotency.rs);
/// the fan-out gives every delivery its key with it.
#[pg_extern(immutable, parallel_safe, strict)]
fn delivery_key(namespace: pgrx::datum::Uuid, event_id: i64, webhook_id: i64) -> pgrx::datum::Uuid {
    let namespace: [u8; 16] = *namespace.as_bytes();
    pgrx::datum::Uuid::from_bytes(crate::idempotency::delivery_key(&namespace, event_id, webhook_id))
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

/// True if `name` in `category` may be registered as an event type (catalog.rs); raises 22023
/// naming them otherwise. Backs billhook.register_event_type.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_event_type(name: &str, category: &str) -> bool {
    catalog::check_registrable(name, category)
        .map_err(|reason| BillhookError::InvalidEventType {
            name: name.to_string(),
            category: category.to_string(),
            reason,
        })
        .or_report();
    true
}
