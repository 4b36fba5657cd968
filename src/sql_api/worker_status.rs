//! The worker seen from SQL: which workers there are, whether they run, and the Prometheus
//! metrics.

use pgrx::prelude::*;

use crate::delivering::{metrics, worker};
use crate::gucs;

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
    let served = worker::this_databases_worker();
    let database = match served {
        Some(_) => worker::current_database_name(),
        None => gucs::databases().join(","),
    };
    let status = served.unwrap_or_default();
    TableIterator::once((
        worker::is_preloaded(),
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
    let databases = gucs::databases();
    let rows: Vec<_> = worker::Place::all(databases.len(), gucs::workers())
        .map(|place| {
            let status = worker::status_of(place);
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
                let webhook = metrics::WebhookMetrics {
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
    let status = worker::this_databases_worker().unwrap_or_default();
    let worker = metrics::WorkerMetrics {
        up: status.pid.is_some(),
        starts: status.starts as i64,
        started_at_seconds: status.started_at.map(crate::pg_time::unix_seconds),
    };
    metrics::render(&webhooks, &worker)
}
