//! Every statement of the worker that moves a delivery from one state to the next (the longest as
//! .sql files beside this one). With the SQL functions named below, this is the whole life of a delivery:
//!
//! ```text
//!             billhook.fan_out                claim
//!   event ─────────────────────▶ pending ──────────────▶ pending + lease
//!                                ▲  ▲ ▲                  (locked_by, locked_until)
//!                                │  │ └── release_leases (claimed, not sent),  │
//!                                │  │     release_stale_leases (worker died),  │
//!                                │  │     or the lease runs out                │
//!                                │  └──── record_outcomes: the attempt failed, ┤ next_attempt_at
//!                                │        a retry is left                      │ = the retry's time
//!                                │                                             ├──▶ succeeded ──▶ (deleted)
//!                                │                           record_outcomes ──┤    billhook.purge,
//!                                │                                             │    after billhook.retention
//!                                │                                             └──▶ failed ──▶ (deleted)
//!                                │                           (the schedule ran out)    billhook.purge, after
//!                                │                                                     billhook.failed_retention
//!                                └── billhook.redeliver (any state), billhook.replay (failed, or
//!                                    succeeded too): pending again, due now
//! ```
//!
//! Only `pending` rows without a live lease are claimed, oldest due first per webhook, and only for
//! enabled webhooks; for a webhook ordered by entity, only while its previous push about the same
//! entity is not pending and no fan-out pass is half done. `status` takes the names of `Status`; schema.sql checks the same three.
//!
//! The statements live here rather than in SQL functions: they change with the worker (its
//! budgets and quotas are their parameters), and the worker runs only against the extension
//! version it was built with, so they need no upgrade scripts. Each is kept as a generic plan
//! (plans.rs), planned once per worker, and those that read the outbox from a floor again when the
//! windows they read change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use rand::Rng;
use serde_json::value::RawValue;

use super::claim::{claim_quota, Budget, Claimed, Quota, CLAIM_HORIZON};
use super::round::FanOut;
use super::transactions::warn_at_commit;
use crate::delivering::http_client::{HttpSettings, Outcome};
use crate::delivering::metrics;
use crate::delivering::push::envelope::{Envelope, Payload, PayloadFormat, Unbuildable as UnbuildableBody};
use crate::delivering::push::headers::parse_headers;
use crate::delivering::push::sign::SigningKey;
use crate::delivering::push::{self, Destination};
use crate::delivering::rate_limit::RateLimit;
use crate::delivering::retry::{NextStep, RetrySchedule, GONE};
use crate::delivering::senders::{Job, Limits};
use crate::delivering::webhook_settings::{
    parse_retry_schedule, MAX_REQUESTS_PER_SECOND, MIN_REQUESTS_PER_SECOND, REQUEST_TIMEOUT_MS,
};
use crate::gucs::AutoDisable;
use crate::plans::{with_kept_plan, with_kept_plan_at_floor};

/// Extra time on every lease beyond the expected wait, so a busy worker never loses its own claims.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Succeeded deliveries, failed ones and events one purge transaction deletes at most, each.
pub(super) const PURGE_BATCH: i64 = 1000;

/// A delivery's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// Waiting for its next attempt, leased or not.
    Pending,
    Succeeded,
    /// Every attempt of the retry schedule failed.
    Failed,
}

impl Status {
    /// For the test that the schema checks these names.
    #[cfg(test)]
    const ALL: [Status; 3] = [Status::Pending, Status::Succeeded, Status::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    /// The status after an attempt whose outcome led to `step`.
    pub fn after(step: NextStep) -> Status {
        match step {
            NextStep::Succeeded => Status::Succeeded,
            NextStep::RetryIn(_) => Status::Pending,
            NextStep::Failed => Status::Failed,
        }
    }
}

/// Creates the deliveries of up to `max_events` events committed since the last fan-out, unless a
/// pass another session started is still open. A backlog (the worker was away) is worked off
/// between claims. With a `quarantine` reason, takes the next event alone and fails its
/// deliveries with that reason (billhook.fan_out).
/// Returns what it did and the deliveries it made.
pub(super) fn fan_out(client: &mut SpiClient<'_>, max_events: i32, quarantine: Option<&str>) -> (FanOut, usize) {
    use pg_sys::BuiltinOid::*;
    let (events, deliveries, owed) = with_kept_plan(
        "SELECT events, deliveries, owed FROM billhook.fan_out($1, wait => false, quarantine => $2)",
        &[INT4OID.oid(), TEXTOID.oid()],
        |plan| client.update(plan, None, &[max_events.into(), quarantine.into()])?.first().get_three::<i64, i64, i64>(),
    )
    .unwrap_or_else(|e| error!("billhook could not fan out events: {e}"));
    match events {
        Some(events) => (
            FanOut::Took { events, more: events >= i64::from(max_events), owed: owed.unwrap_or(0) > 0 },
            deliveries.unwrap_or(0) as usize,
        ),
        None => (FanOut::Busy, 0),
    }
}

/// What of the outbox a worker claims from: its database's webhooks whose id modulo `workers` is
/// `member`, in the windows from the event id `pending_from` on (billhook.pending_from: no window
/// below it held a pending delivery when it was looked up, so the claims scan the windows from
/// there alone, but for one look into older ones for ordered webhooks: claim.sql).
#[derive(Clone, Copy, Debug)]
pub(super) struct Share {
    pub workers: usize,
    pub member: usize,
    pub pending_from: i64,
}

/// The first event id of the outbox window holding `event_id`: k * 2^40 for window k, as
/// billhook.window_start computes it (sql/partitions.sql), and the lowest id for window 0, which
/// starts at MINVALUE.
pub(super) fn window_floor(event_id: i64) -> i64 {
    match event_id >> 40 {
        window if window <= 0 => i64::MIN,
        window => window << 40,
    }
}

/// Where the claims start reading (billhook.pending_from).
pub(super) fn pending_from(client: &mut SpiClient<'_>) -> i64 {
    client
        .select("SELECT billhook.pending_from()", None, &[])
        .and_then(|rows| rows.first().get_one::<i64>())
        .unwrap_or_else(|e| error!("billhook could not look up where its claims start: {e}"))
        .unwrap_or(i64::MIN)
}

/// Claims up to `budget.rows` due deliveries of the worker's share of the enabled webhooks (of
/// `only` of them, if given), oldest first per webhook, each
/// webhook up to its quota (`quotas`; a first quota for the others; scaled to the webhook's own
/// in-flight cap, and no more than its rate limit sends within CLAIM_HORIZON), skipping rows other
/// sessions hold, and stops before the entities reach `budget.bytes` as read (one is always
/// taken, however large). Each lease covers the wait behind the webhook's earlier claims at its
/// in-flight cap and rate limit, plus the request itself.
/// A claimed delivery whose push cannot be built is returned apart, with whose fault that is.
/// The webhook's own settings are taken within their bounds (webhook_settings.rs) wherever the
/// statement computes with them: one stored outside them (behind a dropped check) makes the lease
/// a time Postgres can hold, and its push is set apart as it is built.
pub(super) fn claim(
    client: &mut SpiClient<'_>,
    budget: Budget,
    quotas: &[Quota],
    settings: &HttpSettings,
    extension: pg_sys::Oid,
    share: Share,
    only: Option<&[i64]>,
) -> Claim {
    const CLAIM: &str = include_str!("claim.sql");
    let cap = settings.max_in_flight_per_webhook;
    let first_quota = claim_quota(None, cap, budget.batch);
    let args: Vec<DatumWithOid> = vec![
        quotas.iter().map(|q| q.webhook_id).collect::<Vec<_>>().into(),
        quotas.iter().map(|q| q.held).collect::<Vec<_>>().into(),
        quotas.iter().map(|q| q.quota).collect::<Vec<_>>().into(),
        first_quota.into(),
        (budget.rows as i64).into(),
        settings.request_timeout.as_secs_f64().into(),
        (cap as i32).into(),
        LEASE_MARGIN.as_secs_f64().into(),
        (budget.bytes as i64).into(),
        CLAIM_HORIZON.as_secs_f64().into(),
        (share.workers as i64).into(),
        (share.member as i64).into(),
        only.map(<[i64]>::to_vec).into(),
        MIN_REQUESTS_PER_SECOND.into(),
        MAX_REQUESTS_PER_SECOND.into(),
        (f64::from(REQUEST_TIMEOUT_MS.0) / 1000.0).into(),
        (f64::from(REQUEST_TIMEOUT_MS.1) / 1000.0).into(),
    ];
    use pg_sys::BuiltinOid::*;
    let types = [
        INT8ARRAYOID,
        INT4ARRAYOID,
        INT4ARRAYOID,
        INT4OID,
        INT8OID,
        FLOAT8OID,
        INT4OID,
        FLOAT8OID,
        INT8OID,
        FLOAT8OID,
        INT8OID,
        INT8OID,
        INT8ARRAYOID,
        FLOAT8OID,
        FLOAT8OID,
        FLOAT8OID,
        FLOAT8OID,
    ]
    .map(|t| t.oid());
    with_kept_plan_at_floor(CLAIM, share.pending_from, &types, |plan| {
        client.update(plan, None, &args).map(|rows| claimed_rows(rows, extension))
    })
    .unwrap_or_else(|e| error!("billhook could not claim deliveries: {e}"))
}

/// What a claim took: the pushes to send, and the claimed deliveries whose push could not be built.
#[derive(Default)]
pub(super) struct Claim {
    pub jobs: Vec<Job<Claimed>>,
    pub unbuildable: Vec<Unbuildable>,
}

/// A claimed delivery whose push could not be built, and why.
pub(super) struct Unbuildable {
    pub delivery_id: i64,
    pub webhook_id: i64,
    pub culprit: Culprit,
    pub reason: String,
}

/// Whose fault a push that cannot be built is: its event's (the entity), so that delivery alone is
/// quarantined; or its webhook's (a stored setting the worker cannot use), so the webhook is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Culprit {
    Event,
    Webhook,
}

/// One claimed row's columns, read with the culprit of a column that cannot be read.
struct Columns<'r, 't>(&'r pgrx::spi::SpiHeapTupleData<'t>);

type Built<T> = Result<T, (Culprit, String)>;

impl Columns<'_, '_> {
    fn get<T: pgrx::IntoDatum + pgrx::FromDatum>(&self, name: &str, culprit: Culprit) -> Built<Option<T>> {
        self.0.get_by_name::<T, _>(name).map_err(|e| (culprit, format!("column {name}: {e}")))
    }

    fn text(&self, name: &str, culprit: Culprit) -> Built<String> {
        self.get::<String>(name, culprit)?.ok_or_else(|| (culprit, format!("column {name} is NULL")))
    }

    fn id(&self, name: &str, culprit: Culprit) -> Built<i64> {
        self.get::<i64>(name, culprit)?.ok_or_else(|| (culprit, format!("column {name} is NULL")))
    }
}

fn claimed_rows(rows: SpiTupleTable<'_>, extension: pg_sys::Oid) -> Claim {
    let mut claim = Claim { jobs: Vec::with_capacity(rows.len()), unbuildable: Vec::new() };
    // A webhook's own retry schedule and signing keys, parsed once per claim (an ed25519 key's
    // public half is computed when it is parsed).
    let mut parsed = Parsed::default();
    for row in rows {
        let columns = Columns(&row);
        // Without its ids a row cannot even be quarantined: the claim fails, and the round finds
        // the webhook by claiming for fewer (isolation.rs).
        let (delivery_id, webhook_id) =
            match (columns.id("delivery_id", Culprit::Event), columns.id("webhook_id", Culprit::Webhook)) {
                (Ok(delivery), Ok(webhook)) => (delivery, webhook),
                (Err((_, reason)), _) | (_, Err((_, reason))) => {
                    error!("billhook claimed a delivery it cannot name: {reason}")
                }
            };
        match claimed_job(&columns, delivery_id, webhook_id, extension, &mut parsed) {
            Ok(job) => claim.jobs.push(job),
            Err((culprit, reason)) => claim.unbuildable.push(Unbuildable { delivery_id, webhook_id, culprit, reason }),
        }
    }
    claim
}

/// What a claim parsed of its webhooks' settings, once per distinct value.
#[derive(Default)]
struct Parsed {
    schedules: HashMap<String, Result<Arc<RetrySchedule>, String>>,
    keys: HashMap<String, Option<SigningKey>>,
}

/// A claimed row's push. Every setting of the webhook is checked again as it is read (the
/// webhook's CHECK passed it when it was written, by the rules of an older library perhaps).
fn claimed_job(
    columns: &Columns,
    delivery_id: i64,
    webhook_id: i64,
    extension: pg_sys::Oid,
    parsed: &mut Parsed,
) -> Built<Job<Claimed>> {
    use Culprit::{Event, Webhook};
    let setting = |e: crate::delivering::webhook_settings::InvalidSetting| {
        (Webhook, format!("its {} {} cannot be used: {}", e.setting, e.value, e.reason))
    };
    let format = PayloadFormat::parse(&columns.text("payload_format", Webhook)?)
        .ok_or((Webhook, "its payload_format is unknown".to_string()))?;
    let payload =
        Payload::parse(&columns.text("payload", Webhook)?).ok_or((Webhook, "its payload is unknown".to_string()))?;
    let token = columns.text("token", Webhook)?;
    let url = columns.text("url", Webhook)?;
    let signing_keys = columns
        .get::<Vec<String>>("signing_keys", Webhook)?
        .unwrap_or_default()
        .into_iter()
        .filter_map(|key| parsed.keys.entry(key).or_insert_with_key(|key| SigningKey::parse(key)).clone())
        .collect();
    let retry_schedule = match columns.get::<String>("retry_schedule", Webhook)? {
        Some(text) => Some(
            parsed
                .schedules
                .entry(text)
                .or_insert_with_key(|text| {
                    parse_retry_schedule(text)
                        .map(Arc::new)
                        .map_err(|e| format!("its retry_schedule {} cannot be used: {}", e.value, e.reason))
                })
                .clone()
                .map_err(|reason| (Webhook, reason))?,
        ),
        None => None,
    };
    let headers = match columns.get::<String>("headers", Webhook)? {
        Some(stored) => webhook_headers(&stored).map_err(|reason| (Webhook, reason))?,
        None => Vec::new(),
    };
    let request_timeout = match columns.get::<f64>("request_timeout_ms", Webhook)? {
        Some(ms) => Some(crate::delivering::webhook_settings::request_timeout(ms).map_err(setting)?),
        None => None,
    };
    let limits = Limits {
        max_in_flight: match columns.get::<i32>("max_in_flight", Webhook)? {
            Some(cap) => Some(crate::delivering::webhook_settings::max_in_flight(cap).map_err(setting)?),
            None => None,
        },
        rate: match columns.get::<f64>("max_requests_per_second", Webhook)? {
            Some(rate) => Some(RateLimit::new(
                crate::delivering::webhook_settings::max_requests_per_second(rate).map_err(setting)?,
            )),
            None => None,
        },
    };

    let entity = RawValue::from_string(columns.text("entity", Event)?)
        .map_err(|e| (Event, format!("its entity is not JSON: {e}")))?;
    let (state, previous_state) =
        (columns.get::<String>("state", Event)?, columns.get::<String>("previous_state", Event)?);
    let (action, entity_type, occurred_at) =
        (columns.text("event_type", Event)?, columns.text("entity_type", Event)?, columns.text("occurred_at", Event)?);
    let event_id = columns.id("event_id", Event)?;
    let destination = Destination { url: &url, format, payload, signing_keys, headers, request_timeout };
    let envelope = Envelope {
        administration_id: columns.id("administration_id", Event)?.to_string(),
        webhook_id: webhook_id.to_string(),
        webhook_token: &token,
        entity_type: &entity_type,
        entity_id: columns.id("entity_id", Event)?.to_string(),
        state: state.as_deref(),
        action: &action,
        event_id: Some(event_id.to_string()),
        occurred_at: &occurred_at,
        entity: &entity,
        previous_state: previous_state.as_deref(),
    };
    let push = push::build(destination, &envelope, columns.text("idempotency_key", Event)?)
        .map_err(|UnbuildableBody(reason)| (Event, reason))?;
    let delivery = Claimed {
        delivery_id,
        event_id,
        webhook_id,
        bytes: push.body.len(),
        attempts_before: columns.get::<i32>("attempts", Event)?.unwrap_or_default(),
        extension,
        retry_schedule,
        occurred_at: columns
            .get::<f64>("occurred_epoch", Event)?
            .filter(|epoch| epoch.is_finite())
            .ok_or((Event, "its occurred_at is not a time".to_string()))?,
    };
    Ok(Job { webhook_id, limits, tag: delivery, push })
}

/// A webhook's headers as stored: checked when the webhook was written (check_webhook_headers).
fn webhook_headers(stored: &str) -> Result<Vec<(String, String)>, String> {
    serde_json::from_str(stored)
        .map_err(|e| e.to_string())
        .and_then(|value| parse_headers(&value, false).map_err(|e| format!("{}: {}", e.name, e.reason)))
        .map_err(|e| format!("its headers cannot be used: {e}"))
}

/// Writes a batch of outcomes: the deliveries' status and schedule, one attempt row each, and the
/// webhooks' last status and body and health (the failing streak), disabling those whose pushes have
/// all failed as `auto_disable` says and those whose endpoint last answered 410 Gone, with a WARNING
/// each. Outcomes for deliveries this worker no longer holds are ignored.
/// Rows another session holds locked (an open redeliver, an open update_webhook) are skipped, not
/// waited for: the outcomes that could not be written for that reason are returned, to try again.
/// What the batch did to webhooks and deliveries becomes operational events (emit_operations).
pub(super) fn record_outcomes(
    client: &mut SpiClient<'_>,
    outcomes: &[(Claimed, Outcome)],
    schedule: &RetrySchedule,
    auto_disable: AutoDisable,
    failing_after_failures: i32,
    pending_from: i64,
) -> Recorded {
    const RECORD: &str = include_str!("record_outcomes.sql");
    const STILL_HELD: &str = "SELECT d.id FROM billhook.deliveries AS d
                              WHERE d.id = ANY ($1) AND d.locked_by = pg_backend_pid() AND d.event_id >= $2";
    let mut rng = rand::rng();
    let steps: Vec<NextStep> = outcomes
        .iter()
        .map(|(claimed, outcome)| {
            let attempts_made = u32::try_from(claimed.attempts_before).unwrap_or_default().saturating_add(1);
            let schedule = claimed.retry_schedule.as_deref().unwrap_or(schedule);
            schedule.next_step(outcome.succeeded(), attempts_made, rng.random_range(-1.0..=1.0), outcome.retry_after)
        })
        .collect();
    let ids: Vec<i64> = outcomes.iter().map(|(c, _)| c.delivery_id).collect();
    let event_ids: Vec<i64> = outcomes.iter().map(|(c, _)| c.event_id).collect();
    // As low as the claims' floor, which moves only as windows do: batches from different
    // windows then share one plan instead of each making its own.
    let floor = window_floor(event_ids.iter().copied().min().unwrap_or(i64::MIN)).min(pending_from);
    let statuses: Vec<Option<i32>> = outcomes.iter().map(|(_, o)| o.http_status.map(i32::from)).collect();
    let bodies: Vec<Option<String>> = outcomes.iter().map(|(_, o)| o.response_body.clone()).collect();
    let errors: Vec<Option<String>> = outcomes.iter().map(|(_, o)| o.error.clone()).collect();
    let durations: Vec<i32> =
        outcomes.iter().map(|(_, o)| o.duration.as_millis().min(i32::MAX as u128) as i32).collect();
    let started: Vec<pgrx::datum::TimestampWithTimeZone> =
        outcomes.iter().map(|(_, o)| crate::pg_time::timestamptz(o.started_at)).collect();
    let states: Vec<&str> = steps.iter().map(|s| Status::after(*s).name()).collect();
    let retry_in: Vec<Option<f64>> = steps
        .iter()
        .map(|s| match s {
            NextStep::RetryIn(delay) => Some(delay.as_secs_f64()),
            _ => None,
        })
        .collect();
    let args: Vec<DatumWithOid> = vec![
        ids.clone().into(),
        statuses.into(),
        bodies.into(),
        errors.into(),
        durations.into(),
        started.into(),
        states.into(),
        retry_in.into(),
        auto_disable.after.map_or(0.0, |after| after.as_secs_f64()).into(),
        auto_disable.failures.into(),
        i32::from(GONE).into(),
        failing_after_failures.into(),
        event_ids.into(),
    ];
    use pg_sys::BuiltinOid::*;
    let types = [
        INT8ARRAYOID,
        INT4ARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        INT4ARRAYOID,
        TIMESTAMPTZARRAYOID,
        TEXTARRAYOID,
        FLOAT8ARRAYOID,
        FLOAT8OID,
        INT4OID,
        INT4OID,
        INT4OID,
        INT8ARRAYOID,
    ]
    .map(|t| t.oid());
    let (written, to_disable, reasons, failing, exhausted) = with_kept_plan_at_floor(RECORD, floor, &types, |plan| {
        let row = client.update(plan, None, &args)?.first();
        Ok((
            row.get::<Vec<i64>>(1)?.unwrap_or_default(),
            row.get::<Vec<i64>>(2)?.unwrap_or_default(),
            row.get::<Vec<String>>(3)?.unwrap_or_default(),
            row.get::<Vec<i64>>(4)?.unwrap_or_default(),
            row.get::<Vec<i64>>(5)?.unwrap_or_default(),
        ))
    })
    .unwrap_or_else(|e| error!("billhook could not record delivery outcomes: {e}"));
    // The rows are held locked since RECORD updated them, in this transaction.
    let disabled_ids = disable_webhooks(client, &to_disable, &reasons);
    let operations = emit_operations(client, &failing, &disabled_ids, &exhausted);
    let unwritten: Vec<i64> = if written.len() == outcomes.len() {
        Vec::new()
    } else {
        // Rare: some rows were locked by another session, or are no longer this worker's (taken
        // over, or deleted with their webhook).
        client
            .select(STILL_HELD, None, &[ids.into(), floor.into()])
            .and_then(|rows| rows.into_iter().map(|row| row.get::<i64>(1).map(Option::unwrap_or_default)).collect())
            .unwrap_or_else(|e| error!("billhook could not read its leases: {e}"))
    };
    // Only what was written is counted: the webhook of a delivery that is gone may be gone too.
    add_to_counters(client, &counter_increments(outcomes, &steps, &written));
    Recorded { written: written.len(), unwritten, operations, stalled: false }
}

/// Fails deliveries this worker holds that cannot be sent or recorded, each with its reason as
/// last_error (and, where the push was made, the attempt counted); returns those it failed.
pub(super) fn quarantine_deliveries(client: &mut SpiClient<'_>, deliveries: &[(i64, String, bool)]) -> Vec<i64> {
    const QUARANTINE: &str = "
        UPDATE billhook.deliveries AS d
        SET status = 'failed', locked_by = NULL, locked_until = NULL, last_error = q.reason,
            attempts = least(d.attempts, 999999) + q.attempted::int,
            last_attempt_at = CASE WHEN q.attempted THEN clock_timestamp() ELSE d.last_attempt_at END
        FROM unnest($1::bigint[], $2::text[], $3::boolean[]) AS q(id, reason, attempted)
        WHERE d.id = q.id AND d.locked_by = pg_backend_pid()
        RETURNING d.id";
    if deliveries.is_empty() {
        return Vec::new();
    }
    let ids: Vec<i64> = deliveries.iter().map(|(id, _, _)| *id).collect();
    let reasons: Vec<&str> = deliveries.iter().map(|(_, reason, _)| reason.as_str()).collect();
    let attempted: Vec<bool> = deliveries.iter().map(|(_, _, attempted)| *attempted).collect();
    client
        .update(QUARANTINE, None, &[ids.into(), reasons.into(), attempted.into()])
        .and_then(|rows| rows.into_iter().map(|row| row.get::<i64>(1).map(Option::unwrap_or_default)).collect())
        .unwrap_or_else(|e| error!("billhook could not quarantine deliveries: {e}"))
}

/// The worker's share of the enabled webhooks that have a delivery due that nobody holds: those a
/// claim would take from, for finding the one a failing claim fails on.
pub(super) fn due_webhooks(client: &mut SpiClient<'_>, share: Share) -> Vec<i64> {
    const DUE: &str = "
        SELECT w.id FROM billhook.webhooks AS w
        WHERE w.enabled AND w.id % $1 = $2
          AND EXISTS (SELECT 1 FROM billhook.deliveries AS d
                      WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                        AND (d.locked_until IS NULL OR d.locked_until < now()) AND d.event_id >= $3)
        ORDER BY w.id";
    client
        .select(DUE, None, &[(share.workers as i64).into(), (share.member as i64).into(), share.pending_from.into()])
        .and_then(|rows| rows.into_iter().map(|row| row.get::<i64>(1).map(Option::unwrap_or_default)).collect())
        .unwrap_or_else(|e| error!("billhook could not read the webhooks with deliveries due: {e}"))
}

/// Disables the enabled ones of `webhooks`, each with its reason (a WARNING each); returns those it
/// disabled. Their pending deliveries are held until they are enabled again (billhook.fan_out too
/// holds new ones for them).
pub(super) fn disable_webhooks(client: &mut SpiClient<'_>, webhooks: &[i64], reasons: &[String]) -> Vec<i64> {
    const DISABLE: &str = "
        UPDATE billhook.webhooks AS w
        SET enabled = false, disabled_at = now(), disabled_reason = d.reason
        FROM unnest($1::bigint[], $2::text[]) AS d(id, reason)
        WHERE w.id = d.id AND w.enabled
        RETURNING w.id, format('webhook %s (%s): %s', w.id, billhook.redact_url(w.url), w.disabled_reason)";
    if webhooks.is_empty() {
        return Vec::new();
    }
    let disabled: Vec<(i64, String)> = client
        .update(DISABLE, None, &[webhooks.to_vec().into(), reasons.to_vec().into()])
        .and_then(|rows| {
            rows.into_iter()
                .map(|row| Ok((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
                .collect()
        })
        .unwrap_or_else(|e| error!("billhook could not disable webhooks: {e}"));
    disabled
        .into_iter()
        .map(|(id, webhook)| {
            warn_at_commit(format!("billhook disabled {webhook}"));
            id
        })
        .collect()
}

/// What record_outcomes wrote.
#[derive(Default)]
pub(super) struct Recorded {
    /// Outcomes written (their delivery's row updated, an attempt logged).
    pub written: usize,
    /// Outcomes not written: their deliveries were held locked by another session, or, when
    /// `stalled`, every outcome of the batch.
    pub unwritten: Vec<i64>,
    /// Whether none could be written for a fault that is no row's (quarantine::record_outcomes):
    /// the unwritten are tried again after a pause, not as soon as a lock may have gone.
    pub stalled: bool,
    /// Operational events written (billhook.emit_operations), for the fan-out.
    pub operations: i64,
}

/// The operational events of a batch of outcomes: webhooks whose failing streak reached
/// billhook.failing_after_failures, webhooks disabled, deliveries whose last retry failed. Rare, so
/// not a kept plan.
pub(super) fn emit_operations(client: &mut SpiClient<'_>, failing: &[i64], disabled: &[i64], exhausted: &[i64]) -> i64 {
    if failing.is_empty() && disabled.is_empty() && exhausted.is_empty() {
        return 0;
    }
    client
        .update(
            "SELECT billhook.emit_operations($1, $2, $3)",
            None,
            &[failing.to_vec().into(), disabled.to_vec().into(), exhausted.to_vec().into()],
        )
        .and_then(|rows| rows.first().get_one::<i32>())
        .unwrap_or_else(|e| error!("billhook could not write its operational events: {e}"))
        .map_or(0, i64::from)
}

/// What the outcomes written add to billhook.metrics()'s counters, per webhook and counter: one
/// attempt of its HTTP status class each and, for a delivery acknowledged now, its latency (commit →
/// end of the attempt) to the histogram. Sorted, so that concurrent upserts lock in one order.
fn counter_increments(
    outcomes: &[(Claimed, Outcome)],
    steps: &[NextStep],
    written: &[i64],
) -> BTreeMap<(i64, String), f64> {
    let written: HashSet<i64> = written.iter().copied().collect();
    let mut increments = BTreeMap::new();
    let mut add =
        |webhook: i64, counter: String, value: f64| *increments.entry((webhook, counter)).or_default() += value;
    for ((claimed, outcome), step) in outcomes.iter().zip(steps) {
        if !written.contains(&claimed.delivery_id) {
            continue;
        }
        let webhook = claimed.webhook_id;
        add(webhook, metrics::attempt_counter(outcome.http_status).to_string(), 1.0);
        if *step == NextStep::Succeeded {
            let answered = outcome.started_at + outcome.duration;
            let epoch = answered.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let latency = (epoch - claimed.occurred_at).max(0.0);
            add(webhook, metrics::latency_counter(latency), 1.0);
            add(webhook, metrics::latency_sum_counter().to_string(), latency);
        }
    }
    increments
}

/// Adds to billhook.delivery_counters, in the transaction that writes the attempts counted. Summed
/// here rather than in the record statement: a join of the outcomes there cost more than the rest.
fn add_to_counters(client: &mut SpiClient<'_>, increments: &BTreeMap<(i64, String), f64>) {
    const ADD: &str = "
        INSERT INTO billhook.delivery_counters AS c (webhook_id, counter, value)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::float8[])
        ON CONFLICT (webhook_id, counter) DO UPDATE SET value = c.value + excluded.value";
    if increments.is_empty() {
        return;
    }
    let webhooks: Vec<i64> = increments.keys().map(|(webhook, _)| *webhook).collect();
    let counters: Vec<&str> = increments.keys().map(|(_, counter)| counter.as_str()).collect();
    let values: Vec<f64> = increments.values().copied().collect();
    use pg_sys::BuiltinOid::*;
    let types = [INT8ARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID].map(|t| t.oid());
    with_kept_plan(ADD, &types, |plan| client.update(plan, None, &[webhooks.into(), counters.into(), values.into()]))
        .unwrap_or_else(|e| error!("billhook could not add to its delivery counters: {e}"));
}

/// Makes deliveries this worker claimed and did not send claimable again.
pub(super) fn release_leases(client: &mut SpiClient<'_>, deliveries: &[i64]) {
    client
        .update(
            "UPDATE billhook.deliveries AS d SET locked_until = NULL, locked_by = NULL
             FROM (SELECT s.id, s.event_id FROM billhook.deliveries AS s
                   WHERE s.id = ANY ($1) AND s.locked_by = pg_backend_pid()
                   FOR UPDATE OF s SKIP LOCKED) AS held
             WHERE d.id = held.id AND d.event_id = held.event_id",
            None,
            &[deliveries.to_vec().into()],
        )
        .unwrap_or_else(|e| error!("billhook could not release its leases: {e}"));
}

/// Frees the leases of dead processes. Only a pending delivery's lease stops a claim, and the
/// pending ones are what the partial index `_due` holds: the history is not read, however long.
/// No window below billhook.pending_from holds a pending delivery: given it for this one run, the
/// statement is planned over the windows from there on, not every window kept.
pub(super) fn release_stale_leases() {
    const RELEASE: &str = "
        UPDATE billhook.deliveries AS d SET locked_until = NULL, locked_by = NULL
        FROM (SELECT s.id, s.event_id FROM billhook.deliveries AS s
              WHERE s.status = 'pending' AND s.locked_by IS NOT NULL AND s.locked_by <> pg_backend_pid()
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = s.locked_by)
                AND s.event_id >= $1
              FOR UPDATE OF s SKIP LOCKED) AS stale
        WHERE d.id = stale.id AND d.event_id = stale.event_id AND d.event_id >= $1";
    Spi::connect_mut(|client| {
        let floor = pending_from(client);
        client.update(RELEASE, None, &[floor.into()]).map(|_| ())
    })
    .unwrap_or_else(|e| error!("billhook could not release stale leases: {e}"));
}

/// The outbox's windows: the current one made if missing, the next one made shortly before it is
/// due, the events' ids moved into it once the current one has been open `width` (never if None)
/// (billhook.roll_outbox, which does not wait in line for the locks making a window takes).
pub(super) fn roll_outbox(width: Option<Duration>) {
    let seconds = width.map(|w| w.as_secs_f64());
    Spi::run_with_args("SELECT billhook.roll_outbox(make_interval(secs => $1))", &[seconds.into()])
        .unwrap_or_else(|e| error!("billhook could not look after the outbox's windows: {e}"))
}

/// The retention's ages as intervals: of succeeded deliveries and events, and of failed deliveries
/// (None: they stay).
pub(super) struct RetentionAges {
    succeeded: String,
    failed: Option<String>,
}

impl RetentionAges {
    pub(super) fn new(succeeded: Duration, failed: Option<Duration>) -> Self {
        let interval = |age: Duration| format!("{} seconds", age.as_secs());
        RetentionAges { succeeded: interval(succeeded), failed: failed.map(interval) }
    }
}

/// Drops the oldest outbox window whose rows are all done and old enough, with its partitions
/// (billhook.drop_outbox_window, which takes the locks dropping needs without waiting in line, for
/// about two seconds at most); returns whether one went.
pub(super) fn drop_outbox_window(ages: &RetentionAges) -> bool {
    Spi::get_one_with_args::<i32>(
        "SELECT billhook.drop_outbox_window($1::interval, $2::interval)",
        &[ages.succeeded.as_str().into(), ages.failed.as_deref().into()],
    )
    .unwrap_or_else(|e| error!("billhook could not drop an old outbox window: {e}"))
    .is_some()
}

/// Deletes one batch of succeeded and of failed deliveries old enough, then of events that the
/// fan-out has passed and that have no delivery left (billhook.purge). Returns how many deliveries
/// went.
pub(super) fn purge_batch(ages: &RetentionAges) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT deliveries FROM billhook.purge($1::interval, $2, $3::interval)",
        &[ages.succeeded.as_str().into(), (PURGE_BATCH as i32).into(), ages.failed.as_deref().into()],
    )
    .unwrap_or_else(|e| error!("billhook could not purge old deliveries: {e}"))
    .unwrap_or(0)
}

/// When the worker is to look for due deliveries again, after a claim that took none: the
/// unleased pending deliveries of enabled webhooks that are not paused.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct NextDue {
    /// How long until the soonest of them falls due, of those not due yet.
    pub upcoming: Option<Duration>,
    /// Some are due already, and yet the claim did not take them: they are held back (behind an
    /// earlier push about their entity, by another session's lock, by their webhook's quota).
    pub held_back: bool,
}

/// NextDue, as of now.
pub(super) fn next_due(client: &mut SpiClient<'_>, paused: &[i64], share: Share) -> NextDue {
    const NEXT_DUE: &str = "
        SELECT extract(epoch FROM min(upcoming.at) - now())::float8, coalesce(bool_or(due.at IS NOT NULL), false)
        FROM billhook.webhooks AS w
        LEFT JOIN LATERAL (
            SELECT d.next_attempt_at FROM billhook.deliveries AS d
            WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
              AND (d.locked_until IS NULL OR d.locked_until < now()) AND d.event_id >= {floor}
            LIMIT 1) AS due(at) ON true
        LEFT JOIN LATERAL (
            SELECT d.next_attempt_at FROM billhook.deliveries AS d
            WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at > now()
              AND (d.locked_until IS NULL OR d.locked_until < now()) AND d.event_id >= {floor}
            ORDER BY d.next_attempt_at LIMIT 1) AS upcoming(at) ON true
        WHERE w.enabled AND w.id <> ALL ($1) AND w.id % $2 = $3";
    use pg_sys::BuiltinOid::*;
    let args: [DatumWithOid; 3] = [paused.to_vec().into(), (share.workers as i64).into(), (share.member as i64).into()];
    let types = [INT8ARRAYOID.oid(), INT8OID.oid(), INT8OID.oid()];
    // Kept: it follows every round that claimed nothing, such as each outcome write at a low rate.
    let (upcoming, held_back) = with_kept_plan_at_floor(NEXT_DUE, share.pending_from, &types, |plan| {
        client.select(plan, None, &args)?.first().get_two::<f64, bool>()
    })
    .unwrap_or_else(|e| error!("billhook could not read the next due delivery: {e}"));
    NextDue {
        upcoming: upcoming.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
        held_back: held_back.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_floor_is_its_first_event_id() {
        let window = |k: i64| k << 40;
        assert_eq!(window_floor(window(31)), window(31));
        assert_eq!(window_floor(window(31) + 12_345), window(31));
        assert_eq!(window_floor(window(32) - 1), window(31));
        assert_eq!(window_floor(window(8_388_606) + (1 << 40) - 1), window(8_388_606));
        // Window 0 starts at MINVALUE: every id below 2^40.
        for id in [0, 1, (1 << 40) - 1, -1, i64::MIN] {
            assert_eq!(window_floor(id), i64::MIN, "{id}");
        }
    }

    #[test]
    fn each_next_step_has_its_status() {
        assert_eq!(Status::after(NextStep::Succeeded), Status::Succeeded);
        assert_eq!(Status::after(NextStep::RetryIn(Duration::ZERO)), Status::Pending);
        assert_eq!(Status::after(NextStep::Failed), Status::Failed);
    }

    #[test]
    fn counters_sum_up_per_webhook_and_count_only_written_outcomes() {
        let occurred = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let outcome = |http_status: u16, after_ms: u64| Outcome {
            started_at: occurred + Duration::from_millis(after_ms),
            duration: Duration::from_millis(10),
            http_status: Some(http_status),
            response_body: None,
            error: None,
            retry_after: None,
        };
        let claimed = |delivery_id: i64, webhook_id: i64| Claimed {
            delivery_id,
            event_id: delivery_id,
            webhook_id,
            bytes: 0,
            attempts_before: 0,
            extension: pg_sys::Oid::from(1),
            retry_schedule: None,
            occurred_at: 1_000.0,
        };
        let outcomes = [
            (claimed(1, 7), outcome(200, 40)),
            (claimed(2, 7), outcome(204, 80)),
            (claimed(3, 7), outcome(503, 0)),
            (claimed(4, 8), outcome(200, 0)),
        ];
        let steps = [NextStep::Succeeded, NextStep::Succeeded, NextStep::RetryIn(Duration::ZERO), NextStep::Succeeded];
        let mut counters = counter_increments(&outcomes, &steps, &[1, 2, 3]);
        let sum = counters.remove(&(7, metrics::latency_sum_counter().to_string())).unwrap();
        assert!((sum - 0.14).abs() < 1e-9, "latencies 0.05 s and 0.09 s, got {sum}");
        let expected = BTreeMap::from([
            ((7, "attempts:2xx".to_string()), 2.0),
            ((7, "attempts:5xx".to_string()), 1.0),
            ((7, metrics::latency_counter(0.05)), 1.0),
            ((7, metrics::latency_counter(0.09)), 1.0),
        ]);
        assert_eq!(counters, expected, "webhook 8's only outcome was not written");
    }

    #[test]
    fn the_schema_checks_the_same_status_names() {
        let schema = include_str!("../../../../sql/schema.sql");
        let names: Vec<String> = Status::ALL.iter().map(|s| format!("'{}'", s.name())).collect();
        let check = format!("CHECK (status IN ({}))", names.join(", "));
        assert!(schema.contains(&check), "schema.sql lacks {check}");
    }
}
