//! The parts of a round that touch rows others wrote (the outcomes, the fan-out, the claim), run so
//! that what one of them cannot process is set apart with its reason, where SQL users look, while
//! everything else goes on in the same round (isolation.rs finds what fails):
//! - an outcome that cannot be written: its delivery fails, last_error saying why;
//! - an event whose fan-out fails: decided webhook by webhook, a webhook for which the decision
//!   fails gets a failed delivery saying why (billhook.fan_out's quarantine);
//! - a claim that fails for one webhook, or a push whose webhook setting the worker cannot use:
//!   the webhook is disabled with the reason (its deliveries are held, as for any disabled
//!   webhook) and a `webhook.disabled` operational event;
//! - a push whose event cannot be built into it: that delivery fails, last_error saying why, and a
//!   `delivery.exhausted` operational event.
//!
//! Each is logged as a WARNING once, when it is set apart.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use super::claim::{Budget, Claimed, Quota};
use super::isolation::{blamed, largest_first_part, split_until_alone, Fault, NoneToBlame};
use super::round::FanOut;
use super::statements::{self, Culprit, Recorded, Share};
use super::transactions::{subtransaction, warn_at_commit};
use crate::delivering::http_client::{HttpSettings, Outcome};
use crate::delivering::retry::RetrySchedule;
use crate::delivering::senders::Job;
use crate::gucs::AutoDisable;

/// A fault of the moment (a lock not granted in time, a cancel) is no row's: the round ends, to be
/// tried again as a whole.
fn unless_transient<R>(result: Result<R, Fault>, part: &str) -> Result<R, Fault> {
    match result {
        Err(fault) if fault.transient => error!("billhook could not {part}: {}", fault.message),
        result => result,
    }
}

/// statements::record_outcomes, with each outcome that cannot be written failing its delivery instead.
pub(super) fn record_outcomes(
    client: &mut SpiClient<'_>,
    outcomes: &[(Claimed, Outcome)],
    schedule: &RetrySchedule,
    auto_disable: AutoDisable,
    failing_after_failures: i32,
    pending_from: i64,
) -> Recorded {
    let attempt = |client: &mut SpiClient<'_>, group: &[(Claimed, Outcome)]| {
        let written = subtransaction(|| {
            statements::record_outcomes(client, group, schedule, auto_disable, failing_after_failures, pending_from)
        });
        unless_transient(written, "record delivery outcomes")
    };
    let fault = match attempt(client, outcomes) {
        Ok(recorded) => return recorded,
        Err(fault) => fault,
    };
    // A group is evidence that the fault is its rows' only if it wrote some of them.
    let mut any_written = false;
    let (done, culprits) = split_until_alone(outcomes, fault, &mut |group| {
        let recorded = attempt(client, group)?;
        any_written |= recorded.written > 0;
        Ok(recorded)
    });
    let mut recorded = Recorded::default();
    for part in done {
        recorded.written += part.written;
        recorded.unwritten.extend(part.unwritten);
        recorded.operations += part.operations;
    }
    let culprits = match blamed(any_written, culprits) {
        Ok(culprits) => culprits,
        Err(NoneToBlame { rows, fault }) => {
            warning!("billhook could not record any of {rows} delivery outcomes: {}; trying again", fault.message);
            recorded.unwritten = outcomes.iter().map(|(claimed, _)| claimed.delivery_id).collect();
            recorded.stalled = true;
            return recorded;
        }
    };
    let quarantined: Vec<(i64, String, bool)> = culprits
        .iter()
        .map(|((claimed, outcome), fault)| {
            let answer = match (outcome.http_status, &outcome.error) {
                (Some(status), _) => format!("HTTP {status}"),
                (None, Some(error)) => error.clone(),
                (None, None) => "no answer".to_string(),
            };
            let reason = format!("billhook could not record this attempt's outcome ({answer}): {}", fault.message);
            (claimed.delivery_id, reason, true)
        })
        .collect();
    match subtransaction(|| fail_deliveries(client, &quarantined)) {
        Ok(operations) => recorded.operations += operations,
        Err(fault) => {
            warning!("billhook could not set apart the outcomes it cannot record: {}; trying again", fault.message);
            recorded.unwritten.extend(quarantined.iter().map(|(id, _, _)| *id));
        }
    }
    recorded
}

/// statements::fan_out; when it fails, the largest first part of its events that fans out, or, when
/// even the first event alone fails, that event decided webhook by webhook (billhook.fan_out's
/// quarantine). FanOut::Failed when not even that can be done.
pub(super) fn fan_out(client: &mut SpiClient<'_>, max_events: i32) -> (FanOut, usize) {
    let attempt = |client: &mut SpiClient<'_>, events: i32| {
        unless_transient(subtransaction(|| statements::fan_out(client, events, None)), "fan out events")
    };
    let fault = match attempt(client, max_events) {
        Ok(fanned_out) => return fanned_out,
        Err(fault) => fault,
    };
    let fault = match largest_first_part(max_events, fault, &mut |events| attempt(client, events)) {
        Ok(fanned_out) => return fanned_out,
        Err(fault) => fault,
    };
    const REASON: &str = "billhook could not fan this event out to this webhook";
    let quarantined = subtransaction(|| statements::fan_out(client, 1, Some(REASON)));
    match unless_transient(quarantined, "fan out events") {
        Ok(fanned_out) => {
            warn_at_commit(format!(
                "billhook fanned an event out webhook by webhook, for its fan-out failed: {}",
                fault.message
            ));
            fanned_out
        }
        Err(failed) => {
            warning!(
                "billhook could not fan out events: {}; nor the next event webhook by webhook: {}; trying again",
                fault.message,
                failed.message
            );
            (FanOut::Failed, 0)
        }
    }
}

/// statements::claim, with a webhook the claim fails for, or whose stored settings the worker cannot
/// use, disabled; and a delivery whose push cannot be built failed. Returns the pushes to send, and
/// whether the claim failed for several webhooks alone with nothing claimed beside them: then no
/// webhook is to blame, and the claim waits a pause rather than fail again in every round.
pub(super) fn claim(
    client: &mut SpiClient<'_>,
    budget: Budget,
    quotas: &[Quota],
    settings: &HttpSettings,
    extension: pg_sys::Oid,
    share: Share,
) -> (Vec<Job<Claimed>>, bool) {
    // What the groups of a split claim take counts against the one budget.
    let (mut rows_left, mut bytes_left) = (budget.rows, budget.bytes);
    let mut attempt = |client: &mut SpiClient<'_>, only: Option<&[i64]>| {
        let budget = Budget { rows: rows_left, bytes: bytes_left, ..budget };
        let claimed = subtransaction(|| statements::claim(client, budget, quotas, settings, extension, share, only));
        let claimed = unless_transient(claimed, "claim deliveries")?;
        rows_left = rows_left.saturating_sub(claimed.jobs.len() + claimed.unbuildable.len());
        bytes_left = bytes_left.saturating_sub(claimed.jobs.iter().map(|job| job.tag.bytes).sum());
        Ok(claimed)
    };
    let mut claims = Vec::new();
    let mut failing_webhooks = Vec::new();
    let mut stalled = false;
    match attempt(client, None) {
        Ok(claimed) => claims.push(claimed),
        Err(fault) => {
            let webhooks = statements::due_webhooks(client, share);
            let (done, culprits) = split_until_alone(&webhooks, fault, &mut |group| attempt(client, Some(group)));
            // A group is evidence that the fault is its webhooks' only if it claimed something.
            let any_claimed = done.iter().any(|claim| !claim.jobs.is_empty() || !claim.unbuildable.is_empty());
            claims.extend(done);
            match blamed(any_claimed, culprits) {
                Ok(culprits) => failing_webhooks = culprits,
                Err(NoneToBlame { rows, fault }) => {
                    stalled = true;
                    warning!(
                        "billhook could not claim deliveries for any of {rows} webhooks: {}; trying again",
                        fault.message
                    );
                }
            }
        }
    }
    let mut jobs = Vec::new();
    let mut unbuildable = Vec::new();
    for claimed in claims {
        jobs.extend(claimed.jobs);
        unbuildable.extend(claimed.unbuildable);
    }
    if failing_webhooks.is_empty() && unbuildable.is_empty() {
        return (jobs, stalled);
    }
    let mut webhooks: Vec<(i64, String)> = failing_webhooks
        .into_iter()
        .map(|(id, fault)| (id, format!("billhook could not claim its deliveries: {}", fault.message)))
        .collect();
    let mut deliveries = Vec::new();
    let mut release = Vec::new();
    for push in unbuildable {
        match push.culprit {
            Culprit::Event => {
                let reason = format!("billhook could not build this push: {}", push.reason);
                deliveries.push((push.delivery_id, reason, false));
            }
            Culprit::Webhook => {
                release.push((push.delivery_id, push.webhook_id));
                if !webhooks.iter().any(|(id, _)| *id == push.webhook_id) {
                    webhooks.push((push.webhook_id, format!("billhook cannot build its pushes: {}", push.reason)));
                }
            }
        }
    }
    // Each step on its own: one that fails (a webhook row locked, or outside its checks) keeps the
    // others from nothing. The leases of a webhook's pushes are released once it is disabled (its
    // deliveries are then held); one that could not be disabled keeps them until they run out,
    // rather than be claimed again at once.
    let (ids, reasons): (Vec<i64>, Vec<String>) = webhooks.into_iter().unzip();
    let (disabled, mut operations) =
        set_apart_step(client, "disable webhooks whose pushes it cannot build or claim", |client| {
            let disabled = statements::disable_webhooks(client, &ids, &reasons);
            let written = statements::emit_operations(client, &[], &disabled, &[]);
            (disabled, written)
        })
        .unwrap_or_default();
    let release: Vec<i64> =
        release.into_iter().filter(|(_, webhook)| disabled.contains(webhook)).map(|(delivery, _)| delivery).collect();
    if !release.is_empty() {
        set_apart_step(client, "release the leases of a disabled webhook's pushes", |client| {
            statements::release_leases(client, &release)
        });
    }
    operations +=
        set_apart_step(client, "fail deliveries it cannot build", |client| fail_deliveries(client, &deliveries))
            .unwrap_or_default();
    // Operational events written after this round's fan-out: the next round fans them out.
    if operations > 0 {
        unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
    }
    (jobs, stalled)
}

/// One step of setting apart, in a subtransaction of its own; None (and a WARNING) when it failed.
fn set_apart_step<R>(client: &mut SpiClient<'_>, what: &str, f: impl FnOnce(&mut SpiClient<'_>) -> R) -> Option<R> {
    subtransaction(|| f(client))
        .map_err(|fault| warning!("billhook could not {what}: {}; trying again", fault.message))
        .ok()
}

/// Fails deliveries with their reasons, a WARNING and a `delivery.exhausted` operational event
/// each; returns the operational events written.
fn fail_deliveries(client: &mut SpiClient<'_>, deliveries: &[(i64, String, bool)]) -> i64 {
    let failed = statements::quarantine_deliveries(client, deliveries);
    for (id, reason, _) in deliveries.iter().filter(|(id, _, _)| failed.contains(id)) {
        warn_at_commit(format!("billhook failed delivery {id}: {reason}"));
    }
    statements::emit_operations(client, &[], &[], &failed)
}
