//! The delivery queue: every statement of the worker that moves a delivery from one state to the
//! next. With the SQL functions named below, this is the whole life of a delivery:
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
//!                                │                                             └──▶ failed
//!                                │                                               (the schedule ran out)
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
//! (plans.rs), planned once per worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use rand::Rng;
use serde_json::value::RawValue;

use super::claim::{claim_quota, Budget, Claimed, Quota, CLAIM_HORIZON};
use super::round::FanOut;
use crate::envelope::{Envelope, Payload, PayloadFormat};
use crate::gucs::AutoDisable;
use crate::headers::parse_headers;
use crate::http::{HttpSettings, Job, Limits, Outcome, Push};
use crate::metrics;
use crate::plans::with_kept_plan;
use crate::rate_limit::RateLimit;
use crate::retry::{NextStep, RetrySchedule, GONE};
use crate::sign::SigningKey;
use crate::webhook_settings::parse_retry_schedule;

/// Extra time on every lease beyond the expected wait, so a busy worker never loses its own claims.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Deliveries (and events) one purge transaction deletes at most.
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
/// between claims.
/// Returns what it did and the deliveries it made.
pub(super) fn fan_out(client: &mut SpiClient<'_>, max_events: i32) -> (FanOut, usize) {
    let (events, deliveries) = with_kept_plan(
        "SELECT events, deliveries FROM billhook.fan_out($1, wait => false)",
        &[pg_sys::BuiltinOid::INT4OID.oid()],
        |plan| client.update(plan, None, &[max_events.into()])?.first().get_two::<i64, i64>(),
    )
    .unwrap_or_else(|e| error!("billhook could not fan out events: {e}"));
    match events {
        Some(events) => {
            (FanOut::Took { events, more: events >= i64::from(max_events) }, deliveries.unwrap_or(0) as usize)
        }
        None => (FanOut::Busy, 0),
    }
}

/// A worker's share of its database's webhooks: those whose id modulo `workers` is `member`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Share {
    pub workers: usize,
    pub member: usize,
}

/// Claims up to `budget.rows` due deliveries of the worker's share of the enabled webhooks, oldest first per webhook, each
/// webhook up to its quota (`quotas`; a first quota for the others; scaled to the webhook's own
/// in-flight cap, and no more than its rate limit sends within CLAIM_HORIZON), skipping rows other
/// sessions hold, and stops before the entities reach `budget.bytes` as stored (one is always
/// taken, however large). Each lease covers the wait behind the webhook's earlier claims at its
/// in-flight cap and rate limit, plus the request itself.
pub(super) fn claim(
    client: &mut SpiClient<'_>,
    budget: Budget,
    quotas: &[Quota],
    settings: &HttpSettings,
    generation: pg_sys::Oid,
    share: Share,
) -> Vec<Job<Claimed>> {
    const CLAIM: &str = "
        WITH held AS (
            SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[]) AS h(webhook_id, held, quota)
        ), chosen AS (
            SELECT d.id, d.event_id, coalesce(h.held, 0) + d.position AS position
            FROM billhook.webhooks AS w
            LEFT JOIN held AS h ON h.webhook_id = w.id
            CROSS JOIN LATERAL (
                SELECT least(coalesce(h.quota, $4)::bigint * coalesce(w.max_in_flight, $7) / $7,
                             ceil(w.max_requests_per_second * $10)::bigint) AS quota
            ) AS q
            CROSS JOIN LATERAL (
                SELECT due.id, due.event_id, row_number() OVER (ORDER BY due.next_attempt_at, due.id) AS position
                FROM (SELECT d.id, d.event_id, d.next_attempt_at
                      FROM billhook.deliveries AS d
                      WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                        AND (d.locked_until IS NULL OR d.locked_until < now())
                        -- Ordered by entity: not while the webhook's previous push about the same
                        -- entity is pending (claimed, in flight or waiting for its retry), nor
                        -- while a fan-out pass is half done (an earlier event's delivery may be
                        -- still to come).
                        AND (w.ordering = 'none' OR (
                            (SELECT s.pass IS NULL FROM billhook.fan_out_state AS s)
                            AND NOT EXISTS (
                                SELECT 1
                                FROM billhook.events AS e
                                CROSS JOIN LATERAL (
                                    SELECT p.status
                                    FROM billhook.events AS earlier
                                    JOIN billhook.deliveries AS p
                                      ON p.event_id = earlier.id AND p.webhook_id = d.webhook_id
                                    WHERE earlier.entity_type = e.entity_type AND earlier.entity_id = e.entity_id
                                      AND earlier.id < e.id
                                    ORDER BY earlier.id DESC
                                    LIMIT 1) AS previous
                                WHERE e.id = d.event_id AND previous.status = 'pending')))
                      ORDER BY d.next_attempt_at
                      LIMIT least(q.quota - coalesce(h.held, 0), $5)
                      FOR UPDATE OF d SKIP LOCKED) AS due
            ) AS d
            WHERE w.enabled AND coalesce(h.held, 0) < q.quota AND w.id % $11 = $12
            LIMIT $5
        ), affordable AS (
            -- pg_column_size reads a large entity's TOAST pointer, not the entity.
            SELECT c.id, c.position
            FROM (SELECT c.id, c.position, pg_column_size(e.entity) AS size,
                         sum(pg_column_size(e.entity)) OVER (ORDER BY c.position, c.id) AS running
                  FROM chosen AS c JOIN billhook.events AS e ON e.id = c.event_id) AS c
            WHERE c.running - c.size < $9
        ), claimed AS (
            UPDATE billhook.deliveries AS d
            SET locked_by = pg_backend_pid(),
                locked_until = now() + make_interval(secs =>
                    coalesce(extract(epoch FROM w.request_timeout)::float8, $6::float8)
                        * (chosen.position / coalesce(w.max_in_flight, $7) + 1)
                    + coalesce(chosen.position / w.max_requests_per_second, 0) + $8::float8)
            FROM affordable AS chosen, billhook.events AS e, billhook.webhooks AS w
            WHERE d.id = chosen.id AND e.id = d.event_id AND w.id = d.webhook_id
            RETURNING d.id AS delivery_id, d.webhook_id, d.attempts, d.idempotency_key::text, w.url, w.token,
                      billhook.signing_keys(w) AS signing_keys,
                      CASE WHEN w.headers <> '{}' THEN w.headers::text END AS headers,
                      w.retry_schedule, (extract(epoch FROM w.request_timeout) * 1000)::float8 AS request_timeout_ms,
                      w.max_in_flight, w.max_requests_per_second,
                      w.payload_format, w.payload, e.id AS event_id, e.administration_id, e.event_type, e.entity_type,
                      e.entity_id, e.state, e.previous_state,
                      billhook.json_time(e.occurred_at) AS occurred_at,
                      extract(epoch FROM e.occurred_at)::float8 AS occurred_epoch, e.entity::text AS entity,
                      chosen.position
        )
        -- The senders take each webhook's pushes in this order: oldest due first.
        SELECT * FROM claimed ORDER BY position";
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
    ]
    .map(|t| t.oid());
    with_kept_plan(CLAIM, &types, |plan| client.update(plan, None, &args).map(|rows| claimed_rows(rows, generation)))
        .unwrap_or_else(|e| error!("billhook could not claim deliveries: {e}"))
}

fn claimed_rows(rows: SpiTupleTable<'_>, generation: pg_sys::Oid) -> Vec<Job<Claimed>> {
    let mut claimed = Vec::with_capacity(rows.len());
    // A webhook's own retry schedule and signing keys, parsed once per claim (an ed25519 key's
    // public half is computed when it is parsed).
    let mut schedules: HashMap<String, Arc<RetrySchedule>> = HashMap::new();
    let mut keys: HashMap<String, Option<SigningKey>> = HashMap::new();
    for row in rows {
        let optional = |name: &str| -> Option<String> {
            row.get_by_name::<String, _>(name).unwrap_or_else(|e| error!("claimed column {name}: {e}"))
        };
        let required = |name: &str| optional(name).unwrap_or_else(|| error!("claimed column {name} is NULL"));
        let id = |name: &str| -> i64 {
            row.get_by_name::<i64, _>(name).ok().flatten().unwrap_or_else(|| error!("claimed column {name} is NULL"))
        };
        let webhook_id = id("webhook_id");
        let entity =
            RawValue::from_string(required("entity")).unwrap_or_else(|e| error!("event entity is not JSON: {e}"));
        let (state, previous_state) = (optional("state"), optional("previous_state"));
        let format = PayloadFormat::parse(&required("payload_format"))
            .unwrap_or_else(|| error!("a webhook's stored payload_format is unknown"));
        let payload =
            Payload::parse(&required("payload")).unwrap_or_else(|| error!("a webhook's stored payload is unknown"));
        let (token, action, entity_type, occurred_at) =
            (required("token"), required("event_type"), required("entity_type"), required("occurred_at"));
        let body = Envelope {
            administration_id: id("administration_id").to_string(),
            webhook_id: webhook_id.to_string(),
            webhook_token: &token,
            entity_type: &entity_type,
            entity_id: id("entity_id").to_string(),
            state: state.as_deref(),
            action: &action,
            event_id: Some(id("event_id").to_string()),
            occurred_at: &occurred_at,
            entity: &entity,
            previous_state: previous_state.as_deref(),
        }
        .to_json(format, payload);
        let signing_keys = row
            .get_by_name::<Vec<String>, _>("signing_keys")
            .unwrap_or_else(|e| error!("claimed column signing_keys: {e}"))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|key| keys.entry(key).or_insert_with_key(|key| SigningKey::parse(key)).clone())
            .collect();
        let retry_schedule = optional("retry_schedule").map(|text| {
            schedules
                .entry(text)
                .or_insert_with_key(|text| {
                    Arc::new(
                        parse_retry_schedule(text)
                            .unwrap_or_else(|e| error!("a webhook's stored retry_schedule is invalid: {}", e.reason)),
                    )
                })
                .clone()
        });
        let float = |name: &str| -> Option<f64> {
            row.get_by_name::<f64, _>(name).unwrap_or_else(|e| error!("claimed column {name}: {e}"))
        };
        let limits = Limits {
            max_in_flight: row
                .get_by_name::<i32, _>("max_in_flight")
                .unwrap_or_else(|e| error!("claimed column max_in_flight: {e}"))
                .map(|cap| cap as usize),
            rate: float("max_requests_per_second").map(RateLimit::new),
        };
        let delivery = Claimed {
            delivery_id: id("delivery_id"),
            webhook_id,
            bytes: body.len(),
            attempts_before: row.get_by_name::<i32, _>("attempts").ok().flatten().unwrap_or_default(),
            generation,
            retry_schedule,
            occurred_at: float("occurred_epoch").unwrap_or_else(|| error!("claimed column occurred_epoch is NULL")),
        };
        let mut push = Push::new(&required("url"), body, required("idempotency_key"), signing_keys);
        if let Some(headers) = optional("headers") {
            push.headers.extend(webhook_headers(&headers));
        }
        push.request_timeout = float("request_timeout_ms").map(|ms| Duration::from_secs_f64(ms / 1000.0));
        claimed.push(Job { webhook_id, limits, tag: delivery, push });
    }
    claimed
}

/// A webhook's headers as stored: checked when the webhook was written (check_webhook_headers).
fn webhook_headers(stored: &str) -> Vec<(String, String)> {
    serde_json::from_str(stored)
        .map_err(|e| e.to_string())
        .and_then(|value| parse_headers(&value, false).map_err(|e| format!("{}: {}", e.name, e.reason)))
        .unwrap_or_else(|e| error!("a webhook's stored headers are invalid: {e}"))
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
) -> Recorded {
    const RECORD: &str = "
        WITH outcome AS (
            SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[],
                                 $6::timestamptz[], $7::text[], $8::float8[])
                AS o(delivery_id, http_status, response_body, error, duration_ms, attempted_at, status, retry_in)
        ), free AS (
            SELECT o.* FROM outcome AS o JOIN billhook.deliveries AS d ON d.id = o.delivery_id
            WHERE d.locked_by = pg_backend_pid()
            FOR UPDATE OF d SKIP LOCKED
        ), updated AS (
            UPDATE billhook.deliveries AS d
            SET status = o.status,
                attempts = d.attempts + 1,
                next_attempt_at = CASE WHEN o.retry_in IS NULL THEN d.next_attempt_at
                                       ELSE clock_timestamp() + make_interval(secs => o.retry_in) END,
                locked_until = NULL,
                locked_by = NULL,
                last_attempt_at = o.attempted_at,
                last_http_status = o.http_status,
                last_http_body = o.response_body,
                last_error = o.error,
                last_duration_ms = o.duration_ms,
                delivered_at = CASE WHEN o.status = 'succeeded'
                                    THEN o.attempted_at + make_interval(secs => o.duration_ms / 1000.0) END
            FROM free AS o
            WHERE d.id = o.delivery_id
            RETURNING d.id, d.webhook_id, d.attempts, o.attempted_at, o.duration_ms, o.http_status, o.response_body,
                      o.error, o.status
        ), logged AS (
            INSERT INTO billhook.delivery_attempts
                (delivery_id, webhook_id, attempt, attempted_at, duration_ms, http_status, response_body, error, succeeded)
            SELECT id, webhook_id, attempts, attempted_at, duration_ms, http_status, response_body, error,
                   status = 'succeeded'
            FROM updated
        ), streak AS (
            -- Per webhook in this batch: the last answer, and the failed attempts after its last
            -- success (all of them if none succeeded).
            SELECT u.webhook_id,
                   (array_agg(u.http_status ORDER BY u.attempted_at DESC, u.id DESC))[1] AS http_status,
                   (array_agg(u.response_body ORDER BY u.attempted_at DESC, u.id DESC))[1] AS response_body,
                   (array_agg(coalesce('HTTP ' || u.http_status, u.error) ORDER BY u.attempted_at DESC, u.id DESC))[1]
                       AS last_answer,
                   u.succeeded_at,
                   (array_agg(u.attempted_at ORDER BY u.attempted_at DESC, u.id DESC))[1] AS last_attempt_at,
                   count(*) FILTER (WHERE u.failed) AS failures,
                   min(u.attempted_at) FILTER (WHERE u.failed) AS first_failure
            FROM (SELECT updated.*,
                         status <> 'succeeded' AND attempted_at > coalesce(succeeded_at, '-infinity') AS failed
                  FROM (SELECT *, max(attempted_at) FILTER (WHERE status = 'succeeded')
                                      OVER (PARTITION BY webhook_id) AS succeeded_at
                        FROM updated) AS updated) AS u
            GROUP BY u.webhook_id, u.succeeded_at
        ), health AS (
            -- The webhook's health is for people to look at and for the decision to disable it,
            -- which checks the attempt log itself: a webhook row someone holds locked keeps its
            -- columns (they miss this batch) rather than hold up the worker.
            SELECT f.id, s.http_status, s.response_body, s.last_answer,
                   greatest(f.last_success_at, s.succeeded_at) AS last_success_at,
                   CASE WHEN s.succeeded_at IS NULL THEN f.consecutive_failures + s.failures ELSE s.failures END
                       AS consecutive_failures,
                   CASE WHEN s.succeeded_at IS NULL THEN coalesce(f.failing_since, s.first_failure) ELSE s.first_failure END
                       AS failing_since,
                   f.enabled, s.http_status = $11::int AS gone, s.last_attempt_at,
                   f.consecutive_failures AS failures_before
            FROM billhook.webhooks AS f JOIN streak AS s ON s.webhook_id = f.id
            FOR UPDATE OF f SKIP LOCKED
        ), verdict AS (
            -- An endpoint whose last answer was 410 Gone is disabled at once, whatever the
            -- automatic disabling's settings.
            SELECT h.*,
                   CASE WHEN h.enabled AND h.gone THEN true
                        WHEN h.enabled AND $9::float8 > 0 AND h.consecutive_failures >= $10::int
                             AND h.failing_since <= now() - make_interval(secs => $9::float8)
                        THEN NOT EXISTS (SELECT 1 FROM billhook.delivery_attempts AS a
                                         WHERE a.webhook_id = h.id AND a.attempted_at >= h.failing_since
                                           AND a.succeeded)
                        ELSE false END AS disable
            FROM health AS h
        ), webhook_status AS (
            -- Not `enabled`: a change of it wakes the worker at commit (note_webhooks_changed), so the
            -- few webhooks to disable are disabled by a statement of their own (DISABLE below).
            UPDATE billhook.webhooks AS w
            SET last_http_status = v.http_status,
                last_http_body = v.response_body,
                last_success_at = v.last_success_at,
                consecutive_failures = v.consecutive_failures,
                failing_since = v.failing_since
            FROM verdict AS v
            WHERE w.id = v.id
            RETURNING w.id, v.disable,
                      -- The streak reached billhook.failing_after_failures with this batch.
                      $12::int > 0 AND v.consecutive_failures >= $12::int AND v.failures_before < $12::int
                          AS now_failing,
                      CASE WHEN v.gone
                           THEN format('the endpoint answered 410 Gone at %s: it asks for no more pushes',
                                       billhook.json_time(v.last_attempt_at))
                           ELSE format('every push failed for %s (%s attempts in a row since %s); the last: %s',
                                       date_trunc('second', now() - v.failing_since), v.consecutive_failures,
                                       billhook.json_time(v.failing_since), v.last_answer) END AS reason
        )
        SELECT (SELECT count(*) FROM updated),
               ARRAY(SELECT s.id FROM webhook_status AS s WHERE s.disable ORDER BY s.id),
               ARRAY(SELECT s.reason FROM webhook_status AS s WHERE s.disable ORDER BY s.id),
               ARRAY(SELECT s.id FROM webhook_status AS s WHERE s.now_failing ORDER BY s.id),
               ARRAY(SELECT u.id FROM updated AS u WHERE u.status = 'failed' ORDER BY u.id)";
    // The rows are held locked since RECORD updated them, in this transaction.
    const DISABLE: &str = "
        UPDATE billhook.webhooks AS w
        SET enabled = false, disabled_at = now(), disabled_reason = d.reason
        FROM unnest($1::bigint[], $2::text[]) AS d(id, reason)
        WHERE w.id = d.id AND w.enabled
        RETURNING w.id, format('webhook %s (%s): %s', w.id, billhook.redact_url(w.url), w.disabled_reason)";
    const STILL_HELD: &str = "SELECT d.id FROM billhook.deliveries AS d
                              WHERE d.id = ANY ($1) AND d.locked_by = pg_backend_pid()";
    let mut rng = rand::rng();
    let steps: Vec<NextStep> = outcomes
        .iter()
        .map(|(claimed, outcome)| {
            let attempts_made = (claimed.attempts_before + 1) as u32;
            let schedule = claimed.retry_schedule.as_deref().unwrap_or(schedule);
            schedule.next_step(outcome.succeeded(), attempts_made, rng.random_range(-1.0..=1.0), outcome.retry_after)
        })
        .collect();
    let ids: Vec<i64> = outcomes.iter().map(|(c, _)| c.delivery_id).collect();
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
    ]
    .map(|t| t.oid());
    let (written, to_disable, reasons, failing, exhausted) = with_kept_plan(RECORD, &types, |plan| {
        let row = client.update(plan, None, &args)?.first();
        Ok((
            row.get::<i64>(1)?,
            row.get::<Vec<i64>>(2)?.unwrap_or_default(),
            row.get::<Vec<String>>(3)?.unwrap_or_default(),
            row.get::<Vec<i64>>(4)?.unwrap_or_default(),
            row.get::<Vec<i64>>(5)?.unwrap_or_default(),
        ))
    })
    .unwrap_or_else(|e| error!("billhook could not record delivery outcomes: {e}"));
    let mut disabled_ids = Vec::new();
    if !to_disable.is_empty() {
        let disabled: Vec<(i64, String)> = client
            .update(DISABLE, None, &[to_disable.into(), reasons.into()])
            .and_then(|rows| {
                rows.into_iter()
                    .map(|row| Ok((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
                    .collect()
            })
            .unwrap_or_else(|e| error!("billhook could not disable webhooks: {e}"));
        for (id, webhook) in disabled {
            warning!("billhook disabled {webhook}");
            disabled_ids.push(id);
        }
    }
    let operations = emit_operations(client, &failing, &disabled_ids, &exhausted);
    let unwritten: Vec<i64> = if written.unwrap_or(0) == outcomes.len() as i64 {
        Vec::new()
    } else {
        // Rare: some rows were locked by another session, or are no longer this worker's.
        client
            .select(STILL_HELD, None, &[ids.into()])
            .and_then(|rows| rows.into_iter().map(|row| row.get::<i64>(1).map(Option::unwrap_or_default)).collect())
            .unwrap_or_else(|e| error!("billhook could not read its leases: {e}"))
    };
    add_to_counters(client, &counter_increments(outcomes, &steps, &unwritten));
    Recorded { unwritten, operations }
}

/// What record_outcomes wrote.
pub(super) struct Recorded {
    /// Outcomes of deliveries another session held locked: not written.
    pub unwritten: Vec<i64>,
    /// Operational events written (billhook.emit_operations), for the fan-out.
    pub operations: i64,
}

/// The operational events of a batch of outcomes: webhooks whose failing streak reached
/// billhook.failing_after_failures, webhooks disabled, deliveries whose last retry failed. Rare, so
/// not a kept plan.
fn emit_operations(client: &mut SpiClient<'_>, failing: &[i64], disabled: &[i64], exhausted: &[i64]) -> i64 {
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
    unwritten: &[i64],
) -> BTreeMap<(i64, String), f64> {
    let mut increments = BTreeMap::new();
    let mut add =
        |webhook: i64, counter: String, value: f64| *increments.entry((webhook, counter)).or_default() += value;
    for ((claimed, outcome), step) in outcomes.iter().zip(steps) {
        if unwritten.contains(&claimed.delivery_id) {
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
             FROM (SELECT s.id FROM billhook.deliveries AS s
                   WHERE s.id = ANY ($1) AND s.locked_by = pg_backend_pid()
                   FOR UPDATE OF s SKIP LOCKED) AS held
             WHERE d.id = held.id",
            None,
            &[deliveries.to_vec().into()],
        )
        .unwrap_or_else(|e| error!("billhook could not release its leases: {e}"));
}

/// Frees the leases of dead processes.
pub(super) fn release_stale_leases() {
    Spi::run(
        "UPDATE billhook.deliveries AS d SET locked_until = NULL, locked_by = NULL
         FROM (SELECT s.id FROM billhook.deliveries AS s
               WHERE s.locked_by IS NOT NULL AND s.locked_by <> pg_backend_pid()
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = s.locked_by)
               FOR UPDATE OF s SKIP LOCKED) AS stale
         WHERE d.id = stale.id",
    )
    .unwrap_or_else(|e| error!("billhook could not release stale leases: {e}"))
}

/// Deletes one batch of succeeded deliveries older than `age`, then of events that the fan-out has
/// passed and that have no delivery left (billhook.purge). Returns how many deliveries went.
pub(super) fn purge_batch(age: &str) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT deliveries FROM billhook.purge($1::interval, $2)",
        &[age.into(), (PURGE_BATCH as i32).into()],
    )
    .unwrap_or_else(|e| error!("billhook could not purge old deliveries: {e}"))
    .unwrap_or(0)
}

/// How long until the soonest unleased pending delivery of an enabled webhook that is not paused
/// falls due.
pub(super) fn next_due(client: &mut SpiClient<'_>, paused: &[i64], share: Share) -> Option<Duration> {
    const NEXT_DUE: &str = "
        SELECT extract(epoch FROM min(soonest.at) - now())::float8
        FROM billhook.webhooks AS w
        CROSS JOIN LATERAL (
            SELECT d.next_attempt_at FROM billhook.deliveries AS d
            WHERE d.webhook_id = w.id AND d.status = 'pending'
              AND (d.locked_until IS NULL OR d.locked_until < now())
            ORDER BY d.next_attempt_at LIMIT 1) AS soonest(at)
        WHERE w.enabled AND w.id <> ALL ($1) AND w.id % $2 = $3";
    use pg_sys::BuiltinOid::*;
    let args: [DatumWithOid; 3] = [paused.to_vec().into(), (share.workers as i64).into(), (share.member as i64).into()];
    // Kept: it follows every round that claimed nothing, such as each outcome write at a low rate.
    let seconds = with_kept_plan(NEXT_DUE, &[INT8ARRAYOID.oid(), INT8OID.oid(), INT8OID.oid()], |plan| {
        client.select(plan, None, &args)?.first().get_one::<f64>()
    })
    .unwrap_or_else(|e| error!("billhook could not read the next due delivery: {e}"))?;
    Some(Duration::from_secs_f64(seconds.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_next_step_has_its_status() {
        assert_eq!(Status::after(NextStep::Succeeded), Status::Succeeded);
        assert_eq!(Status::after(NextStep::RetryIn(Duration::ZERO)), Status::Pending);
        assert_eq!(Status::after(NextStep::Failed), Status::Failed);
    }

    #[test]
    fn counters_sum_up_per_webhook_and_skip_unwritten_outcomes() {
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
            webhook_id,
            bytes: 0,
            attempts_before: 0,
            generation: pg_sys::Oid::from(1),
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
        let mut counters = counter_increments(&outcomes, &steps, &[4]);
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
        let schema = include_str!("../../sql/schema.sql");
        let names: Vec<String> = Status::ALL.iter().map(|s| format!("'{}'", s.name())).collect();
        let check = format!("CHECK (status IN ({}))", names.join(", "));
        assert!(schema.contains(&check), "schema.sql lacks {check}");
    }
}
