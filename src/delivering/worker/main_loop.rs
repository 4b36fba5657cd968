//! The worker's loop: a round when one is due (planned from what the worker holds, run in one
//! transaction by round_transaction.rs, then applied; two rounds when a commit's pushes go before
//! the outcomes waiting), the periodic jobs (schedules, purges), and the wait for commits, outcomes
//! or the next due time in between. Also what the worker holds across rounds: the sender pool, the
//! deliveries claimed and not yet recorded, the extension instance it serves.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use super::claim::{Budget, Claimed, Held};
use super::isolation::{Stalled, STALLED_PROBE};
use super::latch::{self, wait, Woken};
use super::round::{self, FanOut, PartCosts, Periodic, Round, FAN_OUT_DELIVERIES};
use super::round_transaction::{self, RoundDone, RoundPlan};
use super::startup::{database_exists, Launcher};
use super::transactions::{extension_transaction, Ended};
use super::{database_of, shmem, statements, Place};
use crate::catalog::EventSet;
use crate::delivering::http_client::Outcome;
use crate::delivering::retry::GONE;
use crate::delivering::senders::{Job, SenderPool};
use crate::gucs::{self, WorkerSettings};

const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long the worker waits before it tries a failed round again, or one a restore held back.
const AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How often old deliveries are purged (more often when the retention itself is short).
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How soon the worker tries again what another session's lock kept it from: the fan-out while
/// another session's pass holds it, outcomes of deliveries another session held locked.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// How soon the worker looks again at due deliveries a claim could not take (held back).
const HELD_BACK_RETRY: Duration = Duration::from_secs(1);
/// How soon the fan-out tries again to make the deliveries it owes to webhooks another session
/// held locked.
const OWED_RETRY: Duration = Duration::from_millis(500);
/// Overdue invoices (and expired quotations) marked per sweep transaction.
const SWEEP_CHANGES: i32 = 1000;
const SWEEPS_PER_ROUND: usize = 10;
const PURGE_BATCHES_PER_ROUND: usize = 10;
/// Outbox windows dropped per purge at most: each holds the outbox's tables for a moment.
const WINDOWS_DROPPED_PER_ROUND: usize = 3;

/// Whether a round fans out new events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FanOutDue {
    No,
    Yes,
    /// Yes, and a commit came since the last round: its pushes may go before the outcomes waiting.
    AfterCommit,
}

/// What a round does with the outcomes the worker holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcomes {
    Write,
    /// Leaves them for the next round.
    Wait,
}

pub(super) struct Worker {
    /// The worker's database and member number; its slot in shared memory.
    place: Place,
    slot: usize,
    /// The database's workers (`billhook.workers`) as of the last reload: the claim takes the
    /// webhooks whose id modulo this is the worker's member number.
    members: usize,
    database: String,
    launcher: Option<Launcher>,
    settings: WorkerSettings,
    pool: Option<SenderPool<Claimed>>,
    /// The OID of the extension instance served (InvalidOid: none): a dropped and created again
    /// extension is another instance, and nothing claimed from the old one is written to the new.
    extension: pg_sys::Oid,
    /// A round's transaction found another extension instance than `extension` (or none).
    extension_changed: bool,
    released_stale_leases: bool,
    held: Held,
    /// Claimed deliveries taken back from the senders unsent: their leases are released in the
    /// next round, so they are claimed again at once.
    unsent: Vec<i64>,
    /// Pushes handed to the senders and not yet returned, of any extension instance.
    in_flight: usize,
    outcomes: Vec<(Claimed, Outcome)>,
    /// Outcomes none of which could be written, for a fault that is no row's: tried again after a
    /// pause, while the rounds in between write the others, fan out and claim.
    stalled: Stalled<(Claimed, Outcome)>,
    /// Until when the worker claims nothing, after a claim that failed with no webhook to blame.
    claims_paused_until: Option<Instant>,
    /// The installed extension version last warned about as not this library's.
    reported_version: Option<String>,
    /// The webhook change count when the worker last published the subscribed events.
    subscriptions_seen: Option<u64>,
    /// Where the claims start (statements::Share), and the requeue count when it was looked up.
    pending_from: i64,
    requeues_seen: Option<u64>,
    /// Webhooks that could get deliveries, counted when the subscriptions are looked at: a round's
    /// fan-out takes fewer events the more there are.
    fan_out_webhooks: i64,
    /// What each part of a round cost per row lately: the next rounds' sizes.
    costs: PartCosts,
    /// Subscriptions are also looked at every poll interval, should a change have gone uncounted
    /// (a prepared transaction is committed by another backend).
    subscriptions: Periodic,
    purges: Periodic,
    sweeps: Periodic,
    window_upkeeps: Periodic,
    last_round: Instant,
    /// The last round's budget left its fan-out or claim undone: the next round is due at once.
    deferred: bool,
}

impl Worker {
    pub(super) fn new(place: Place, database: String, launcher: Option<Launcher>) -> Worker {
        Worker {
            place,
            slot: place.slot(),
            members: gucs::workers(),
            database,
            launcher,
            settings: gucs::worker_settings(),
            pool: None,
            extension: pg_sys::InvalidOid,
            extension_changed: true,
            released_stale_leases: false,
            held: Held::default(),
            unsent: Vec::new(),
            in_flight: 0,
            outcomes: Vec::new(),
            stalled: Stalled::default(),
            claims_paused_until: None,
            reported_version: None,
            subscriptions_seen: None,
            pending_from: i64::MIN,
            requeues_seen: None,
            fan_out_webhooks: 1,
            costs: PartCosts::default(),
            subscriptions: Periodic::default(),
            purges: Periodic::default(),
            sweeps: Periodic::default(),
            window_upkeeps: Periodic::default(),
            last_round: Instant::now(),
            deferred: false,
        }
    }

    /// Delivers until shutdown; true when the worker's place is no longer configured and it is to
    /// end for good.
    pub(super) fn run(mut self) -> bool {
        // Outcome rounds skip the fan-out: only commits (and the poll) bring new events. A commit
        // counts a wake-up before it sets the latch; the fan-out is due while a wake-up counted
        // before a round has not been followed by a complete pass, however the latch was reset.
        let mut fan_out_due = true;
        let mut wake_ups_passed = shmem::wake_ups(self.slot);
        // The count as the last round started: another count means a commit came since.
        let mut wake_ups_seen = wake_ups_passed;
        let mut leaving = false;
        while !latch::shutdown_requested() {
            let reloaded = latch::reload_settings_if_asked();
            if reloaded {
                match database_of(self.place) {
                    Some(database) if database == self.database => {}
                    Some(database) => {
                        log!("billhook worker {} now serves database \"{database}\": restarting", self.slot);
                        shmem::set_database_found(self.slot, database_exists(&database));
                        unsafe { pg_sys::proc_exit(1) };
                    }
                    // Fewer workers (or databases): what came back is recorded below, then it ends.
                    None => {
                        leaving = true;
                        break;
                    }
                }
                self.settings = gucs::worker_settings();
                self.members = gucs::workers();
            }
            if let Some(launcher) = &mut self.launcher {
                launcher.launch_if_due(reloaded);
            }
            // First, so that the senders' last outcomes let new settings take effect in this pass.
            self.collect_outcomes();
            self.apply_http_settings();

            let since_round = self.last_round.elapsed();
            let round = if self.deferred
                || round::round_due(self.in_flight, since_round, self.outcomes.len(), self.settings.batch_size)
            {
                self.last_round = Instant::now();
                if !self.extension_ready() {
                    if wait(None, self.settings.poll_interval) == Woken::ShutDown {
                        break;
                    }
                    continue;
                }
                let wake_ups = shmem::wake_ups(self.slot);
                let due = if wake_ups != wake_ups_seen {
                    FanOutDue::AfterCommit
                } else if fan_out_due || wake_ups != wake_ups_passed {
                    FanOutDue::Yes
                } else {
                    FanOutDue::No
                };
                wake_ups_seen = wake_ups;
                let round = self.record_and_claim(true, due);
                if let FanOut::Took { more, owed, .. } = round.fan_out {
                    fan_out_due = more || owed;
                    if !fan_out_due {
                        wake_ups_passed = wake_ups;
                    }
                }
                // A commit that woke the worker during the round may have had its latch reset by a
                // wait inside it (for a lock, say): the wait below would not see it.
                if shmem::wake_ups(self.slot) != wake_ups {
                    unsafe { pg_sys::SetLatch(pg_sys::MyLatch) };
                }
                fan_out_due |= round.fan_out == FanOut::Deferred;
                self.deferred = round.deferred;
                self.sweep_if_due();
                self.roll_outbox_if_due();
                self.purge_if_due();
                round
            } else {
                Round::idle(Some(round::ROUND_INTERVAL - since_round))
            };

            // Otherwise sleep until an outcome arrives, a commit wakes us, or the next retry falls due.
            if !round.wants_another(self.settings.batch_size) {
                let socket = self.pool.as_ref().map(|p| p.wake_fd());
                let timeout = [
                    round.next_due,
                    self.purges.due_in(self.purge_every()),
                    self.sweeps.due_in(self.sweep_every()),
                    self.window_upkeeps.due_in(self.window_upkeep_every()),
                ]
                .into_iter()
                .flatten()
                .fold(self.settings.poll_interval, Duration::min);
                match wait(socket, timeout) {
                    Woken::ShutDown => break,
                    Woken::CommitOrTimeout => fan_out_due = true,
                    Woken::Outcomes => {}
                }
            }
        }
        // Outcomes already received are recorded; pushes still in flight are claimed again later
        // (same idempotency key) because their leases die with this process.
        self.collect_outcomes();
        let stalled = self.stalled.take_all();
        self.outcomes.splice(0..0, stalled);
        let extension = self.extension;
        if extension != pg_sys::InvalidOid && extension == self.extension_to_serve() {
            // Round after round while they get written; outcomes of rows another session holds
            // would come back for ever.
            loop {
                let waiting = self.outcomes.len();
                let round = self.record_and_claim(false, FanOutDue::No);
                if !round.outcomes_left || self.outcomes.len() >= waiting {
                    break;
                }
            }
        }
        log!("billhook delivery worker stopped");
        leaving
    }

    /// New HTTP settings take effect once nothing is in flight on the old senders: the pushes they
    /// have not started are handed back (their leases released in the next round), so only those
    /// already sending are waited for.
    fn apply_http_settings(&mut self) {
        let settings = &self.settings.http;
        if let Some(pool) = self.pool.as_ref().filter(|p| p.settings() != settings) {
            for tag in pool.discard_waiting() {
                self.in_flight -= 1;
                self.held.release(&tag);
                self.unsent.push(tag.delivery_id);
            }
        }
        if self.pool.as_ref().is_none_or(|p| p.settings() != settings) && self.in_flight == 0 {
            self.pool = None;
            match SenderPool::start(settings.clone()) {
                Ok(pool) => self.pool = Some(pool),
                Err(e) => error!("billhook could not start its sender threads: {e}"),
            }
        }
    }

    /// Whether the extension this library belongs to is installed. Rounds check it inside their own
    /// transaction; it is looked up afresh only when one of them found it changed, or while there
    /// is none. A new instance starts from nothing held, its dead workers' leases freed first.
    fn extension_ready(&mut self) -> bool {
        if self.extension_changed || self.extension == pg_sys::InvalidOid {
            self.extension_changed = false;
            let extension = self.extension_to_serve();
            if extension != self.extension {
                self.forget_everything(extension);
            }
        }
        if self.extension == pg_sys::InvalidOid {
            return false;
        }
        if !self.released_stale_leases {
            let ended = extension_transaction(self.extension, statements::release_stale_leases);
            self.released_stale_leases = matches!(ended, Ended::Committed(()));
        }
        true
    }

    /// The extension's OID in this database, or InvalidOid while it is not installed or is another
    /// version than this library's (installed before an upgrade of billhook and not yet updated:
    /// the worker waits for `ALTER EXTENSION billhook UPDATE`, saying so once).
    fn extension_to_serve(&mut self) -> pg_sys::Oid {
        // The OID and the version from one row, as of one snapshot: a CREATE EXTENSION of another
        // version committed between two look-ups must not pair its OID with the version before.
        let (oid, version) = BackgroundWorker::transaction(|| {
            Spi::get_two::<pg_sys::Oid, String>(
                "SELECT e.oid, e.extversion FROM (SELECT) AS one
                 LEFT JOIN pg_catalog.pg_extension AS e ON e.extname = 'billhook'",
            )
            .unwrap_or_else(|e| error!("billhook could not read its extension version: {e}"))
        });
        match version {
            None => pg_sys::InvalidOid,
            Some(version) if version != LIBRARY_VERSION => {
                if self.reported_version.as_deref() != Some(version.as_str()) {
                    warning!(
                        "billhook {version} is installed in database \"{}\" but the library is {LIBRARY_VERSION}: nothing is delivered until ALTER EXTENSION billhook UPDATE",
                        self.database
                    );
                    self.reported_version = Some(version);
                }
                pg_sys::InvalidOid
            }
            Some(_) => oid.unwrap_or(pg_sys::InvalidOid),
        }
    }

    fn forget_everything(&mut self, extension: pg_sys::Oid) {
        self.extension = extension;
        self.released_stale_leases = false;
        self.subscriptions_seen = None;
        self.pending_from = i64::MIN;
        self.requeues_seen = None;
        shmem::publish_subscribed_events(self.slot, EventSet::ALL);
        self.held.clear();
        self.outcomes.clear();
        self.stalled = Stalled::default();
        // Queued pushes belong to the old extension: drop them; those already sending return later
        // and are discarded.
        if let Some(pool) = &self.pool {
            self.in_flight -= pool.discard_waiting().len();
        }
        self.unsent.clear();
    }

    fn collect_outcomes(&mut self) {
        let Some(pool) = &self.pool else { return };
        for done in pool.take_done() {
            self.in_flight -= 1;
            // An endpoint that answered 410 Gone gets nothing more: the round that writes this
            // outcome disables its webhook, and the pushes already claimed wait for it to be enabled.
            if done.outcome.http_status == Some(GONE) {
                for tag in pool.discard_waiting_of(done.tag.webhook_id) {
                    self.in_flight -= 1;
                    self.held.release(&tag);
                    self.unsent.push(tag.delivery_id);
                }
            }
            // Still held until its outcome is written: a claim in between must not push it again.
            if done.tag.extension == self.extension {
                self.outcomes.push((done.tag, done.outcome));
            }
        }
    }

    /// One round, in three stages: its plan, taken from what the worker holds; its transaction
    /// (round_transaction.rs: write the outcomes, fan out new events, claim more if the senders
    /// are `accepting` and there is room); and what the worker does with the result.
    ///
    /// After a commit, when outcomes wait too, the fan-out and its claim commit first, in a round
    /// of their own, and the outcomes follow in a second (which claims again what they free): the
    /// commit's pushes leave without waiting for the outcome statement.
    fn record_and_claim(&mut self, accepting: bool, due: FanOutDue) -> Round {
        if !(due == FanOutDue::AfterCommit && self.pushes_may_go_first(accepting)) {
            return self.run_round(accepting, due != FanOutDue::No, Outcomes::Write).0;
        }
        let (fan_out_round, committed) = self.run_round(accepting, true, Outcomes::Wait);
        if !committed {
            return fan_out_round;
        }
        fan_out_round.followed_by(self.run_round(accepting, false, Outcomes::Write).0)
    }

    /// Whether new pushes may be claimed before the outcomes waiting are written: by the worker
    /// that fans out, with room at the senders.
    fn pushes_may_go_first(&self, accepting: bool) -> bool {
        self.place.member == 0
            && !self.outcomes.is_empty()
            && self.held.budget(self.settings.batch_size, self.senders_accepting(accepting)).rows > 0
    }

    /// Whether a claim may take pushes now: the caller's `accepting`, claims not paused after a
    /// failed one, and the senders running with the current settings.
    fn senders_accepting(&self, accepting: bool) -> bool {
        accepting
            && self.claims_paused_for(Instant::now()).is_none()
            && self.pool.as_ref().is_some_and(|p| *p.settings() == self.settings.http)
    }

    /// One round's three stages, and whether its transaction committed (true when there was
    /// nothing to do).
    fn run_round(&mut self, accepting: bool, fan_out_due: bool, outcomes: Outcomes) -> (Round, bool) {
        let Some(plan) = self.plan_round(accepting, fan_out_due, outcomes) else {
            let now = Instant::now();
            let next_due = self.stalled.due_in(now).into_iter().chain(self.claims_paused_for(now)).min();
            return (Round::idle(next_due), true);
        };
        let settings = &self.settings;
        let ended = extension_transaction(plan.extension, || round_transaction::run(&plan, settings));
        let committed = matches!(ended, Ended::Committed(_));
        (self.apply_round(plan, ended), committed)
    }

    /// What the next round is to do; the outcomes it is to write and the leases it is to release
    /// leave the worker until the round is applied. None when there is nothing to do.
    fn plan_round(&mut self, accepting: bool, fan_out_due: bool, outcomes: Outcomes) -> Option<RoundPlan> {
        let settings = &self.settings;
        if outcomes == Outcomes::Write {
            let probe = self.stalled.take_due(Instant::now(), STALLED_PROBE);
            self.outcomes.splice(0..0, probe);
        }
        let accepting = self.senders_accepting(accepting);
        let budget = self.held.budget(settings.batch_size, accepting);
        let fans_out = fan_out_due && self.place.member == 0;
        let written_now = if outcomes == Outcomes::Write {
            self.outcomes.len().min(self.costs.outcomes.rows(round::round_outcomes(settings.batch_size)))
        } else {
            0
        };
        if written_now == 0 && self.unsent.is_empty() && budget.rows == 0 && !fans_out {
            return None;
        }
        let mut paused = self.pool.as_ref().map(|p| p.paused_webhooks()).unwrap_or_default();
        // A failure may disable its webhook (410 Gone at once, a streak by billhook.disable_after):
        // its outcome is written before that webhook is claimed for again.
        if outcomes == Outcomes::Wait {
            paused.extend(self.outcomes.iter().filter(|(_, outcome)| !outcome.succeeded()).map(|(c, _)| c.webhook_id));
        }
        let paces = self.pool.as_ref().map(|p| p.paces()).unwrap_or_default();
        let webhook_changes = shmem::webhook_changes();
        let requeues = shmem::requeues();
        let outcomes_left = written_now < self.outcomes.len();
        let look_at_subscriptions = self.subscriptions.run_now(Some(settings.poll_interval))
            || self.subscriptions_seen != Some(webhook_changes);
        Some(RoundPlan {
            extension: self.extension,
            slot: self.slot,
            share: statements::Share {
                workers: self.members,
                member: self.place.member,
                pending_from: self.pending_from,
            },
            outcomes_left,
            outcomes: self.outcomes.drain(..written_now).collect(),
            unsent: std::mem::take(&mut self.unsent),
            look_at_subscriptions,
            webhook_changes,
            look_up_pending_from: look_at_subscriptions || self.requeues_seen != Some(requeues),
            requeues,
            known_webhooks: self.fan_out_webhooks,
            // New events are the first worker's to fan out; the others fan out only the
            // operational events their own outcomes write.
            fan_out_due: fans_out,
            fan_out_deliveries: self.costs.fan_out.rows(FAN_OUT_DELIVERIES),
            budget: Budget { rows: self.costs.claim.rows(budget.rows), ..budget },
            quotas: self.held.quotas(settings.http.max_in_flight_per_webhook, settings.batch_size, &paused, &paces),
            paused,
        })
    }

    /// Takes a round's result back into the worker: outcomes another session kept it from writing
    /// wait for a later round, the others' deliveries leave the held set, the claimed pushes go to
    /// the senders. Returns what the loop needs to know of the round.
    fn apply_round(&mut self, plan: RoundPlan, ended: Ended<RoundDone>) -> Round {
        let RoundDone {
            unwritten,
            outcomes_stalled,
            claim_stalled,
            claimed,
            fanned_out,
            next_due,
            webhooks,
            deferred,
            took,
            pending_from,
        } = match ended {
            Ended::Committed(done) => done,
            Ended::ExtensionChanged => {
                self.extension_changed = true;
                return Round::idle(None);
            }
            Ended::Failed | Ended::HeldBack => {
                self.outcomes.splice(0..0, plan.outcomes);
                self.unsent.extend(plan.unsent);
                return Round::idle(Some(AFTER_FAILURE));
            }
        };
        self.costs.observe(&took);
        // Deliveries made (of new events or of debts) may be another member's to claim.
        if took.fan_out.0 > 0 && self.members > 1 {
            shmem::wake_siblings(self.place);
        }
        // Outcomes of deliveries another session holds locked are written in a later round; the
        // rest leave the held set only now, after the claim that could have returned them.
        // Nothing may be in flight to bring the next round, so the round asks for one itself.
        let wrote_outcomes = !plan.outcomes.is_empty();
        let unwritten: HashSet<i64> = unwritten.into_iter().collect();
        let mut not_written = Vec::new();
        for (claimed, outcome) in plan.outcomes {
            if unwritten.contains(&claimed.delivery_id) {
                not_written.push((claimed, outcome));
            } else {
                self.held.release(&claimed);
            }
        }
        let now = Instant::now();
        let locked_out = !not_written.is_empty() && !outcomes_stalled;
        let mut released_stalled = false;
        if outcomes_stalled {
            self.stalled.set_aside(not_written, now, AFTER_FAILURE);
        } else {
            self.outcomes.extend(not_written);
            // Only a round that wrote outcomes (the probe among them) shows the fault gone.
            if wrote_outcomes {
                let released = self.stalled.after_round_went_on();
                released_stalled = !released.is_empty();
                self.outcomes.splice(0..0, released);
            }
        }
        let write_again = locked_out.then_some(BUSY_RETRY).into_iter().chain(self.stalled.due_in(now)).min();
        if claim_stalled {
            self.claims_paused_until = Some(now + AFTER_FAILURE);
        }
        if plan.look_at_subscriptions {
            self.subscriptions_seen = Some(plan.webhook_changes);
        }
        if let Some(from) = pending_from {
            self.pending_from = from;
            self.requeues_seen = Some(plan.requeues);
        }
        self.fan_out_webhooks = webhooks;
        let pause_ends = self.pool.as_ref().and_then(|p| p.next_pause_end());
        let fan_out_again = match fanned_out {
            FanOut::Busy => Some(BUSY_RETRY),
            // Nothing wakes the worker when the lock goes.
            FanOut::Took { owed: true, .. } => Some(OWED_RETRY),
            FanOut::Failed => Some(AFTER_FAILURE),
            _ => None,
        };
        // Deliveries due that the claim did not take are held back. When this round wrote outcomes,
        // the quotas it claimed with were from before them: the next round, at once, claims what
        // they freed. Otherwise they wait for what holds them back (an earlier push about their
        // entity, whose own due time or outcome wakes the worker; another session's lock; pushes
        // in flight): looked at again a little later, not round after round without pause.
        let held_back = next_due.held_back.then_some(if wrote_outcomes { Duration::ZERO } else { HELD_BACK_RETRY });
        let round = Round {
            claimed: claimed.len(),
            fan_out: fanned_out,
            next_due: [
                next_due.upcoming,
                held_back,
                pause_ends,
                fan_out_again,
                write_again,
                self.claims_paused_for(now),
            ]
            .into_iter()
            .flatten()
            .min(),
            // Outcomes held after a stall and released now are written by the next round, at once.
            outcomes_left: plan.outcomes_left || released_stalled,
            deferred,
        };
        let jobs: Vec<Job<Claimed>> = claimed.into_iter().filter(|job| self.held.take(&job.tag)).collect();
        if let Some(pool) = &self.pool {
            self.in_flight += jobs.len();
            pool.submit(jobs);
        }
        round
    }

    /// How long claims stay paused after one that failed with no webhook to blame; None once they
    /// may go on.
    fn claims_paused_for(&self, now: Instant) -> Option<Duration> {
        self.claims_paused_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// The database's first worker alone runs its periodic jobs (schedules, purges).
    fn runs_periodic_jobs(&self) -> bool {
        self.place.member == 0
    }

    fn purge_every(&self) -> Option<Duration> {
        self.runs_periodic_jobs().then_some(())?;
        Some(PURGE_EVERY.min(self.settings.retention? / 2))
    }

    /// The outbox's windows are looked after every minute (more often when a window is shorter),
    /// so that a window is open for its width and a minute at most.
    fn window_upkeep_every(&self) -> Option<Duration> {
        self.runs_periodic_jobs().then_some(())?;
        Some(self.settings.outbox_window.map_or(PURGE_EVERY, |width| PURGE_EVERY.min(width / 2)))
    }

    fn sweep_every(&self) -> Option<Duration> {
        self.runs_periodic_jobs().then_some(())?;
        self.settings.schedule_interval
    }

    /// Runs the schedules when due, one transaction per call of run_schedules, again at once (up to
    /// SWEEPS_PER_ROUND) while a call reached its max_changes.
    fn sweep_if_due(&mut self) {
        if !self.sweeps.run_now(self.sweep_every()) {
            return;
        }
        for _ in 0..SWEEPS_PER_ROUND {
            let ended = extension_transaction(self.extension, || {
                Spi::run("SET LOCAL synchronous_commit = on")
                    .and_then(|_| {
                        Spi::get_one_with_args::<bool>(
                            "SELECT coalesce(max(n), 0) >= $1 FROM (
                                 SELECT count(*) AS n FROM billhook.run_schedules(max_changes => $1)
                                 WHERE action IN ('overdue', 'expired') GROUP BY action) AS changed",
                            &[SWEEP_CHANGES.into()],
                        )
                    })
                    .unwrap_or_else(|e| error!("billhook could not run its schedules: {e}"))
            });
            if matches!(ended, Ended::HeldBack) {
                self.sweeps.again_in(self.sweep_every(), AFTER_FAILURE);
            }
            if !matches!(ended, Ended::Committed(Some(true))) {
                break;
            }
        }
    }

    /// Makes the outbox's next windows ahead and moves the events' ids into the next window once
    /// the current one has been open billhook.outbox_window (billhook.roll_outbox); with windows
    /// that never move on, makes sure the current one exists. A lock it would wait for (a long
    /// transaction on the outbox) makes it try again at its next turn.
    fn roll_outbox_if_due(&mut self) {
        if !self.window_upkeeps.run_now(self.window_upkeep_every()) {
            return;
        }
        let width = self.settings.outbox_window;
        if let Ended::HeldBack = extension_transaction(self.extension, || statements::roll_outbox(width)) {
            self.window_upkeeps.again_in(self.window_upkeep_every(), AFTER_FAILURE);
        }
    }

    fn purge_if_due(&mut self) {
        let Some(retention) = self.settings.retention.filter(|_| self.runs_periodic_jobs()) else { return };
        if !self.purges.run_now(self.purge_every()) {
            return;
        }
        let ages = statements::RetentionAges::new(retention, self.settings.failed_retention);
        // Whole windows first: what is left for the row-by-row purge is what they kept back.
        for _ in 0..WINDOWS_DROPPED_PER_ROUND {
            match extension_transaction(self.extension, || statements::drop_outbox_window(&ages)) {
                Ended::Committed(true) => {}
                Ended::HeldBack => {
                    self.purges.again_in(self.purge_every(), AFTER_FAILURE);
                    return;
                }
                _ => break,
            }
        }
        for _ in 0..PURGE_BATCHES_PER_ROUND {
            let Ended::Committed(purged) = extension_transaction(self.extension, || statements::purge_batch(&ages))
            else {
                break;
            };
            if purged < statements::PURGE_BATCH {
                break;
            }
        }
    }
}
