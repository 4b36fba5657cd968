//! The middle stage of a round (main_loop.rs plans it and applies its result): one transaction
//! that writes the outcomes, releases leases, looks at the subscriptions, fans out, and claims,
//! each part within the round's budget and each in subtransactions (quarantine.rs), so what one
//! row cannot do is set apart and the rest go on.

use std::time::Instant;

use pgrx::prelude::*;

use super::claim::{Budget, Claimed, Quota};
use super::round::{fan_out_events, within_budget, FanOut, PartsTook};
use super::transactions::subtransaction;
use super::{quarantine, shmem, statements};
use crate::catalog::EventSet;
use crate::delivering::http_client::Outcome;
use crate::delivering::senders::Job;
use crate::gucs::WorkerSettings;

/// What a round is to do, planned from the worker's state before its transaction.
pub(super) struct RoundPlan {
    /// The extension instance the round is for (its OID).
    pub extension: pg_sys::Oid,
    /// The worker's slot in shared memory, where the subscribed events are published.
    pub slot: usize,
    pub share: statements::Share,
    /// The outcomes to write: the oldest that fit the round, `outcomes_left` when more wait.
    pub outcomes: Vec<(Claimed, Outcome)>,
    pub outcomes_left: bool,
    /// Claimed deliveries taken back from the senders unsent: their leases are released.
    pub unsent: Vec<i64>,
    /// Whether to count the subscriptions again (webhooks changed, or the poll interval passed),
    /// and the webhook change count read before.
    pub look_at_subscriptions: bool,
    pub webhook_changes: u64,
    /// Whether to look up again where the claims start (`share.pending_from`): every poll
    /// interval, and after commits that may have queued deliveries below it (the count read before).
    pub look_up_pending_from: bool,
    pub requeues: u64,
    /// Webhooks that could get deliveries, as last counted.
    pub known_webhooks: i64,
    /// Whether new events are to be fanned out, and how many deliveries a fan-out pass may make.
    pub fan_out_due: bool,
    pub fan_out_deliveries: usize,
    /// What to claim: the budget, each held webhook's quota, and the webhooks whose endpoint asked
    /// for a pause (not claimed for).
    pub budget: Budget,
    pub quotas: Vec<Quota>,
    pub paused: Vec<i64>,
}

/// Runs `plan` in the current transaction (the caller's extension_transaction).
pub(super) fn run(plan: &RoundPlan, settings: &WorkerSettings) -> RoundDone {
    let started = Instant::now();
    let mut took = PartsTook::default();
    Spi::connect_mut(|client| {
        let recorded = if plan.outcomes.is_empty() {
            statements::Recorded::default()
        } else {
            quarantine::record_outcomes(
                client,
                &plan.outcomes,
                &settings.retry_schedule,
                settings.auto_disable,
                settings.failing_after_failures,
                plan.share.pending_from,
            )
        };
        // A stalled part's time is its failed attempts', not a cost per row to plan rounds by.
        if !recorded.stalled {
            took.outcomes = (plan.outcomes.len(), started.elapsed());
        }
        if !plan.unsent.is_empty() {
            statements::release_leases(client, &plan.unsent);
        }
        // Before the fan-out: an event committed before the new set is published is one
        // this round's fan-out sees.
        let webhooks = if plan.look_at_subscriptions {
            let (events, webhooks) = subscriptions(client);
            shmem::publish_subscribed_events(plan.slot, events);
            webhooks
        } else {
            plan.known_webhooks
        };
        // Operational events this transaction wrote go out with it, unless the round's
        // budget is spent.
        let fanned_out = match plan.fan_out_due || recorded.operations > 0 {
            true if within_budget(started.elapsed()) => {
                let fan_out_started = Instant::now();
                let (fanned_out, deliveries) =
                    quarantine::fan_out(client, fan_out_events(webhooks, plan.fan_out_deliveries));
                took.fan_out = (deliveries, fan_out_started.elapsed());
                fanned_out
            }
            true => FanOut::Deferred,
            false => FanOut::NotDue,
        };
        // After the fan-out, whose deliveries it counts. Should it fail, the claims read every window.
        let pending_from = plan.look_up_pending_from.then(|| {
            subtransaction(|| statements::pending_from(client)).unwrap_or_else(|fault| {
                warning!("billhook could not look up where its claims start: {}; reading every window", fault.message);
                i64::MIN
            })
        });
        let share = statements::Share { pending_from: pending_from.unwrap_or(plan.share.pending_from), ..plan.share };
        // Nor does it claim once the budget is spent: the next round, at once, does.
        let deferred = fanned_out == FanOut::Deferred || (plan.budget.rows > 0 && !within_budget(started.elapsed()));
        if plan.budget.rows == 0 || deferred {
            return RoundDone {
                unwritten: recorded.unwritten,
                outcomes_stalled: recorded.stalled,
                claim_stalled: false,
                claimed: Vec::new(),
                fanned_out,
                next_due: statements::NextDue::default(),
                webhooks,
                deferred,
                took,
                pending_from,
            };
        }
        let claim_started = Instant::now();
        let (claimed, claim_stalled) =
            quarantine::claim(client, plan.budget, &plan.quotas, &settings.http, plan.extension, share);
        if !claim_stalled {
            took.claim = (claimed.len(), claim_started.elapsed());
        }
        // While pushes are in flight, their outcomes bring the next round anyway; a stalled claim
        // waits its pause, whatever is due.
        let next_due = if claimed.is_empty() && !claim_stalled {
            statements::next_due(client, &plan.paused, share)
        } else {
            statements::NextDue::default()
        };
        RoundDone {
            unwritten: recorded.unwritten,
            outcomes_stalled: recorded.stalled,
            claim_stalled,
            claimed,
            fanned_out,
            next_due,
            webhooks,
            deferred: false,
            took,
            pending_from,
        }
    })
}

/// What a round's transaction did.
pub(super) struct RoundDone {
    /// Outcomes not written: their deliveries were held locked by another session, or none could
    /// be written (`outcomes_stalled`).
    pub unwritten: Vec<i64>,
    /// None of the outcomes could be written, for a fault that is no row's: they wait a pause.
    pub outcomes_stalled: bool,
    /// The claim failed for several webhooks alone, nothing claimed beside them: the next claim
    /// waits a pause.
    pub claim_stalled: bool,
    pub claimed: Vec<Job<Claimed>>,
    pub fanned_out: FanOut,
    /// When deliveries nobody holds fall due, looked up after a claim that found nothing.
    pub next_due: statements::NextDue,
    /// Webhooks that could get deliveries, as this round counted them.
    pub webhooks: i64,
    /// The round's budget left its fan-out or claim to the next round.
    pub deferred: bool,
    pub took: PartsTook,
    /// Where the claims start, if the round looked it up.
    pub pending_from: Option<i64>,
}

/// The events some enabled webhook subscribes to, or one billhook disabled (which holds its
/// deliveries, made at once like any other), and how many such webhooks there are. The webhook
/// change count was read before this statement's snapshot is taken, so a change it misses is
/// counted after: the next round looks again.
fn subscriptions(client: &mut pgrx::spi::SpiClient<'_>) -> (EventSet, i64) {
    let (names, webhooks) = client
        .select(
            "SELECT coalesce(array_agg(DISTINCT e.name), '{}'), count(DISTINCT w.id)
             FROM billhook.webhooks AS w CROSS JOIN LATERAL unnest(w.subscribed_events) AS e(name)
             WHERE w.enabled OR w.disabled_at IS NOT NULL",
            None,
            &[],
        )
        .and_then(|rows| rows.first().get_two::<Vec<String>, i64>())
        .unwrap_or_else(|e| error!("billhook could not read the webhooks' subscriptions: {e}"));
    (EventSet::of(names.unwrap_or_default()), webhooks.unwrap_or(0))
}
