//! The delivery worker: fan committed events out into deliveries → claim due deliveries → send
//! them from sender threads → record outcomes, in one loop on the worker's main thread (the only
//! thread that touches Postgres).
//!
//! - Claims take a lease (`locked_until`, `locked_by`) with `FOR UPDATE SKIP LOCKED`, so a killed
//!   worker's deliveries are claimed again; at start the worker frees leases of dead processes.
//! - Each webhook has at most `billhook.max_in_flight_per_webhook` requests in flight; the rest of
//!   its claimed deliveries wait in a per-webhook queue, so a dead endpoint never holds the senders.
//! - Outcomes are written in batches, in the same transaction as the fan-out and the next claim,
//!   unless the round has spent its budget (round::ROUND_BUDGET) before those: then the next round,
//!   at once, does them, so that no round adds up the outcomes, fan-out and claims of many webhooks;
//!   each part takes only the rows that fit its own budget at its recent cost (round::PartCost).
//! - Commits that record events some webhook subscribes to set the worker's latch (see `wake`);
//!   polling is the fallback. With `billhook.workers` > 1 each member sends for its share of the
//!   webhooks (`place`, `statements::Share`).
//!
//! The rooms: `shmem` (what ordinary backends call), `latch` (waits, signals, transactions),
//! `queue` (every statement that moves a delivery, and the drawing of its states), `claim` (how
//! much to claim from whom), `round` (when the loop goes to the database), and here the loop.

mod claim;
mod isolation;
mod latch;
mod place;
mod quarantine;
mod round;
mod shmem;
mod statements;
mod transactions;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::catalog::EventSet;
use crate::delivering::http_client::Outcome;
use crate::delivering::retry::GONE;
use crate::delivering::senders::{Job, SenderPool};
use crate::gucs::{self, WorkerSettings};
use claim::{Budget, Claimed, Held};
use latch::{wait, Woken};
use round::{fan_out_events, within_budget, FanOut, PartCosts, PartsTook, Periodic, Round, FAN_OUT_DELIVERIES};
use transactions::{extension_transaction, Ended};

pub use place::Place;
pub use shmem::{
    is_preloaded, register_in_postmaster, status_of, subscribed_events, wake, webhooks_changed, Wake, WorkerStatus,
};

pub fn current_database_name() -> String {
    unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }.to_string_lossy().into_owned()
}

/// The first worker of the session's database, if `billhook.databases` names it.
pub fn this_databases_worker() -> Option<WorkerStatus> {
    let name = current_database_name();
    gucs::databases().iter().position(|d| *d == name).map(|database| status_of(Place { database, member: 0 }))
}

/// The database the worker at `place` serves, if the settings still have that place.
fn database_of(place: Place) -> Option<String> {
    let databases = gucs::databases();
    place.is_configured(databases.len(), gucs::workers()).then(|| databases[place.database].clone())
}

const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The longest the worker waits for a lock; a round that would wait longer is tried again.
const LOCK_TIMEOUT: &std::ffi::CStr = c"1s";
/// How long the worker waits before it tries a failed round again.
const AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How often old deliveries are purged (more often when the retention itself is short).
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How soon the worker tries again what another session's lock kept it from: the fan-out while
/// another session's pass holds it, outcomes of deliveries another session held locked.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// How soon the fan-out tries again to make the deliveries it owes to webhooks another session
/// held locked.
const OWED_RETRY: Duration = Duration::from_millis(500);
/// Overdue invoices (and expired quotations) marked per sweep transaction.
const SWEEP_CHANGES: i32 = 1000;
const SWEEPS_PER_ROUND: usize = 10;
const PURGE_BATCHES_PER_ROUND: usize = 10;

/// Each configured database has `billhook.workers` workers: the one started with argument `slot`
/// has the place `Place::of_slot(slot)`. The postmaster starts the first; the first starts the
/// others (`shmem::launch`). Each serves its database alone: another database's endpoints,
/// extension or restarts never touch it; within a database each sends its share of the webhooks.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn billhook_worker_main(arg: pg_sys::Datum) {
    latch::install_signal_handlers();
    let slot = arg.value();
    let place = Place::of_slot(slot);
    let Some(database) = database_of(place) else { end_for_good(slot) };
    if !shmem::take_slot(slot) {
        // A second worker for the slot (registered twice around a crash): the first one stays.
        unsafe { pg_sys::proc_exit(if slot == 0 { 1 } else { 0 }) };
    }
    let mut launcher = (slot == 0).then(Launcher::default);
    // A bgworker connects once and a missing database is FATAL, so the worker first waits for the
    // database while connected to no database, then restarts to connect to it.
    if !shmem::take_database_found(slot) {
        BackgroundWorker::connect_worker_to_spi(None, None);
        wait_for_database(place, &database, launcher.as_mut());
        shmem::set_database_found(slot, true);
        unsafe { pg_sys::proc_exit(1) };
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    shmem::set_database_found(slot, true);
    pin_session_settings();
    shmem::announce_started(slot);
    log!("billhook delivery worker {} started for database \"{database}\"", place.member);
    let leaving = Worker::new(place, database, launcher).run();
    shmem::announce_stopped(slot);
    if leaving {
        end_for_good(slot);
    }
    // Exit code 1 has the postmaster start the worker again (unless it is shutting down), so
    // pg_terminate_backend restarts the worker rather than ending deliveries for good.
    unsafe { pg_sys::proc_exit(1) };
}

/// The slot's place is no longer configured (its database or its member number): exit code 0
/// unregisters the worker. The first worker stays registered (the postmaster's), waiting for a
/// database to be configured again.
fn end_for_good(slot: usize) -> ! {
    if slot == 0 {
        while wait(None, gucs::poll_interval()) != Woken::ShutDown && !latch::reload_settings_if_asked() {}
        unsafe { pg_sys::proc_exit(1) };
    }
    shmem::release_slot(slot);
    let place = Place::of_slot(slot);
    log!(
        "billhook delivery worker {} of database {} in billhook.databases ends: the settings have no place for it",
        place.member,
        place.database + 1
    );
    unsafe { pg_sys::proc_exit(0) }
}

/// What the first database's worker does besides its deliveries: starting the workers of the
/// other databases, when it starts, after each reload and every poll interval (should one not
/// have started for want of max_worker_processes).
#[derive(Default)]
struct Launcher {
    runs: Periodic,
    /// Places the server had no room for, warned about once.
    warned: HashSet<Place>,
}

impl Launcher {
    fn launch_if_due(&mut self, reloaded: bool) {
        if !self.runs.run_now(Some(gucs::poll_interval())) && !reloaded {
            return;
        }
        let databases = gucs::databases();
        for place in shmem::launch(databases.len(), gucs::workers()) {
            if self.warned.insert(place) {
                ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    format!(
                        "billhook could not start delivery worker {} for database \"{}\"",
                        place.member, databases[place.database]
                    ),
                    "",
                )
                .set_hint(
                    "Each database of billhook.databases needs billhook.workers background workers: raise \
                     max_worker_processes.",
                )
                .report(PgLogLevel::WARNING);
            }
        }
    }
}

/// The worker's own writes (leases, outcomes, purges) need not wait for the WAL flush: if a crash
/// loses the last of them, those deliveries are sent again under the same key. Sweeps, which
/// create invoices, commit synchronously (see sweep_if_due).
/// Its queries touch a batch of rows by key; without hash and merge joins, and with sequential
/// scans only where no index serves, the planner cannot pick a full scan of the outbox on tables
/// filled faster than autovacuum analyses them (a plan kept from when `deliveries` was nearly
/// empty would scan all of it for every outcome batch).
/// Its hot statements are kept (plans.rs) with generic plans: planned once, not every round; and
/// never JIT-compiled, which Postgres does again at every execution: once a backlog's estimates pass
/// jit_above_cost, that took longer than running the claim.
/// Whatever the cluster's or the database's defaults, its transactions are read-write READ
/// COMMITTED (a serializable default would make its SKIP LOCKED claims fail), its triggers fire,
/// it resolves names in pg_catalog only, no statement is cut short, and no lock is waited for
/// longer than LOCK_TIMEOUT (a round that hits it is tried again; see transactions::extension_transaction).
fn pin_session_settings() {
    for (name, value) in [
        (c"synchronous_commit", c"off"),
        (c"enable_hashjoin", c"off"),
        (c"enable_mergejoin", c"off"),
        (c"enable_seqscan", c"off"),
        (c"plan_cache_mode", c"force_generic_plan"),
        (c"jit", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"default_transaction_read_only", c"off"),
        (c"session_replication_role", c"origin"),
        (c"search_path", c"pg_catalog, pg_temp"),
        (c"statement_timeout", c"0"),
        (c"lock_timeout", LOCK_TIMEOUT),
    ] {
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
}

fn database_exists(database: &str) -> bool {
    let name = std::ffi::CString::new(database).unwrap_or_default();
    BackgroundWorker::transaction(|| unsafe { pg_sys::get_database_oid(name.as_ptr(), true) } != pg_sys::InvalidOid)
}

fn wait_for_database(place: Place, database: &str, mut launcher: Option<&mut Launcher>) {
    let mut reloaded = false;
    loop {
        if let Some(launcher) = launcher.as_deref_mut() {
            launcher.launch_if_due(reloaded);
        }
        if database_exists(database) {
            return;
        }
        let woken = wait(None, gucs::poll_interval());
        reloaded = latch::reload_settings_if_asked();
        if woken == Woken::ShutDown || (reloaded && database_of(place).as_deref() != Some(database)) {
            unsafe { pg_sys::proc_exit(1) };
        }
    }
}

struct Worker {
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
    /// The installed extension version last warned about as not this library's.
    reported_version: Option<String>,
    /// The webhook change count when the worker last published the subscribed events.
    subscriptions_seen: Option<u64>,
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
    last_round: Instant,
    /// The last round's budget left its fan-out or claim undone: the next round is due at once.
    deferred: bool,
}

impl Worker {
    fn new(place: Place, database: String, launcher: Option<Launcher>) -> Worker {
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
            reported_version: None,
            subscriptions_seen: None,
            fan_out_webhooks: 1,
            costs: PartCosts::default(),
            subscriptions: Periodic::default(),
            purges: Periodic::default(),
            sweeps: Periodic::default(),
            last_round: Instant::now(),
            deferred: false,
        }
    }

    /// Delivers until shutdown; true when the worker's place is no longer configured and it is to
    /// end for good.
    fn run(mut self) -> bool {
        // Outcome rounds skip the fan-out: only commits (and the poll) bring new events. A commit
        // counts a wake-up before it sets the latch; the fan-out is due while a wake-up counted
        // before a round has not been followed by a complete pass, however the latch was reset.
        let mut fan_out_due = true;
        let mut wake_ups_passed = shmem::wake_ups(self.slot);
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
                let round = self.record_and_claim(true, fan_out_due || wake_ups != wake_ups_passed);
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
                self.purge_if_due();
                round
            } else {
                Round::idle(Some(round::ROUND_INTERVAL - since_round))
            };

            // Otherwise sleep until an outcome arrives, a commit wakes us, or the next retry falls due.
            if !round.wants_another(self.settings.batch_size) {
                let socket = self.pool.as_ref().map(|p| p.wake_fd());
                let timeout =
                    [round.next_due, self.purges.due_in(self.purge_every()), self.sweeps.due_in(self.sweep_every())]
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
        let extension = self.extension;
        if extension != pg_sys::InvalidOid && extension == self.extension_to_serve() {
            self.record_and_claim(false, false);
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
        let (oid, version) = BackgroundWorker::transaction(|| {
            let version = Spi::get_one::<String>(
                "SELECT max(extversion) FROM pg_catalog.pg_extension WHERE extname = 'billhook'",
            )
            .unwrap_or_else(|e| error!("billhook could not read its extension version: {e}"));
            (transactions::installed_extension(), version)
        });
        match version {
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
            _ => oid,
        }
    }

    fn forget_everything(&mut self, extension: pg_sys::Oid) {
        self.extension = extension;
        self.released_stale_leases = false;
        self.subscriptions_seen = None;
        shmem::publish_subscribed_events(self.slot, EventSet::ALL);
        self.held.clear();
        self.outcomes.clear();
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

    /// One transaction: write the outcomes gathered so far, fan out new events, then claim more if
    /// the senders are `accepting` and there is room.
    fn record_and_claim(&mut self, accepting: bool, fan_out_due: bool) -> Round {
        // New events are the first worker's to fan out; the others fan out only the operational
        // events their own outcomes write.
        let fan_out_due = fan_out_due && self.place.member == 0;
        let share = statements::Share { workers: self.members, member: self.place.member };
        let settings = &self.settings;
        let accepting = accepting && self.pool.as_ref().is_some_and(|p| *p.settings() == settings.http);
        let budget = self.held.budget(settings.batch_size, accepting);
        if self.outcomes.is_empty() && self.unsent.is_empty() && budget.rows == 0 {
            return Round::idle(None);
        }
        let written_now = self.outcomes.len().min(self.costs.outcomes.rows(round::round_outcomes(settings.batch_size)));
        let budget = Budget { rows: self.costs.claim.rows(budget.rows), ..budget };
        let fan_out_deliveries = self.costs.fan_out.rows(FAN_OUT_DELIVERIES);
        let outcomes_left = written_now < self.outcomes.len();
        let outcomes: Vec<(Claimed, Outcome)> = self.outcomes.drain(..written_now).collect();
        let unsent = std::mem::take(&mut self.unsent);
        let paused = self.pool.as_ref().map(|p| p.paused_webhooks()).unwrap_or_default();
        let paces = self.pool.as_ref().map(|p| p.paces()).unwrap_or_default();
        let quotas = self.held.quotas(settings.http.max_in_flight_per_webhook, settings.batch_size, &paused, &paces);
        let extension = self.extension;
        let slot = self.slot;
        let webhook_changes = shmem::webhook_changes();
        let look_at_subscriptions = self.subscriptions.run_now(Some(settings.poll_interval))
            || self.subscriptions_seen != Some(webhook_changes);
        let known_webhooks = self.fan_out_webhooks;
        let ended = extension_transaction(extension, || {
            let started = Instant::now();
            let mut took = PartsTook::default();
            Spi::connect_mut(|client| {
                let recorded = if outcomes.is_empty() {
                    statements::Recorded { unwritten: Vec::new(), operations: 0 }
                } else {
                    quarantine::record_outcomes(
                        client,
                        &outcomes,
                        &settings.retry_schedule,
                        settings.auto_disable,
                        settings.failing_after_failures,
                    )
                };
                took.outcomes = (outcomes.len(), started.elapsed());
                if !unsent.is_empty() {
                    statements::release_leases(client, &unsent);
                }
                // Before the fan-out: an event committed before the new set is published is one
                // this round's fan-out sees.
                let webhooks = if look_at_subscriptions {
                    let (events, webhooks) = subscriptions(client);
                    shmem::publish_subscribed_events(slot, events);
                    webhooks
                } else {
                    known_webhooks
                };
                // Operational events this transaction wrote go out with it, unless the round's
                // budget is spent.
                let fanned_out = match fan_out_due || recorded.operations > 0 {
                    true if within_budget(started.elapsed()) => {
                        let fan_out_started = Instant::now();
                        let (fanned_out, deliveries) =
                            quarantine::fan_out(client, fan_out_events(webhooks, fan_out_deliveries));
                        took.fan_out = (deliveries, fan_out_started.elapsed());
                        fanned_out
                    }
                    true => FanOut::Deferred,
                    false => FanOut::NotDue,
                };
                // Nor does it claim once the budget is spent: the next round, at once, does.
                let deferred = fanned_out == FanOut::Deferred || (budget.rows > 0 && !within_budget(started.elapsed()));
                if budget.rows == 0 || deferred {
                    return RoundDone {
                        unwritten: recorded.unwritten,
                        claimed: Vec::new(),
                        fanned_out,
                        next_due: None,
                        webhooks,
                        deferred,
                        took,
                    };
                }
                let claim_started = Instant::now();
                let claimed = quarantine::claim(client, budget, &quotas, &settings.http, extension, share);
                took.claim = (claimed.len(), claim_started.elapsed());
                // While pushes are in flight, their outcomes bring the next round anyway.
                let next_due = if claimed.is_empty() { statements::next_due(client, &paused, share) } else { None };
                RoundDone {
                    unwritten: recorded.unwritten,
                    claimed,
                    fanned_out,
                    next_due,
                    webhooks,
                    deferred: false,
                    took,
                }
            })
        });
        let RoundDone { unwritten, claimed, fanned_out, next_due, webhooks, deferred, took } = match ended {
            Ended::Committed(done) => done,
            Ended::ExtensionChanged => {
                self.extension_changed = true;
                return Round::idle(None);
            }
            Ended::Failed => {
                self.outcomes.splice(0..0, outcomes);
                self.unsent.extend(unsent);
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
        let write_again = (!unwritten.is_empty()).then_some(BUSY_RETRY);
        let unwritten: HashSet<i64> = unwritten.into_iter().collect();
        for (claimed, outcome) in outcomes {
            if unwritten.contains(&claimed.delivery_id) {
                self.outcomes.push((claimed, outcome));
            } else {
                self.held.release(&claimed);
            }
        }
        if look_at_subscriptions {
            self.subscriptions_seen = Some(webhook_changes);
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
        let round = Round {
            claimed: claimed.len(),
            fan_out: fanned_out,
            next_due: [next_due, pause_ends, fan_out_again, write_again].into_iter().flatten().min(),
            outcomes_left,
            deferred,
        };
        let jobs: Vec<Job<Claimed>> = claimed.into_iter().filter(|job| self.held.take(&job.tag)).collect();
        if let Some(pool) = &self.pool {
            self.in_flight += jobs.len();
            pool.submit(jobs);
        }
        round
    }

    /// The database's first worker alone runs its periodic jobs (schedules, purges).
    fn runs_periodic_jobs(&self) -> bool {
        self.place.member == 0
    }

    fn purge_every(&self) -> Option<Duration> {
        self.runs_periodic_jobs().then_some(())?;
        Some(PURGE_EVERY.min(self.settings.retention? / 2))
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
            if !matches!(ended, Ended::Committed(Some(true))) {
                break;
            }
        }
    }

    fn purge_if_due(&mut self) {
        let Some(retention) = self.settings.retention.filter(|_| self.runs_periodic_jobs()) else { return };
        if !self.purges.run_now(self.purge_every()) {
            return;
        }
        let age = format!("{} seconds", retention.as_secs());
        for _ in 0..PURGE_BATCHES_PER_ROUND {
            let Ended::Committed(purged) = extension_transaction(self.extension, || statements::purge_batch(&age))
            else {
                break;
            };
            if purged < statements::PURGE_BATCH {
                break;
            }
        }
    }
}

/// What a round's transaction did.
struct RoundDone {
    /// Outcomes not written: their deliveries were held locked by another session.
    unwritten: Vec<i64>,
    claimed: Vec<Job<Claimed>>,
    fanned_out: FanOut,
    /// When a delivery nobody holds falls due, looked up after a claim that found nothing.
    next_due: Option<Duration>,
    /// Webhooks that could get deliveries, as this round counted them.
    webhooks: i64,
    /// The round's budget left its fan-out or claim to the next round.
    deferred: bool,
    took: PartsTook,
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
