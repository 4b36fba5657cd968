//! The delivery worker: fan committed events out into deliveries → claim due deliveries → send
//! them from sender threads → record outcomes, in one loop on the worker's main thread (the only
//! thread that touches Postgres).
//!
//! - Claims take a lease (`locked_until`, `locked_by`) with `FOR UPDATE SKIP LOCKED`, so a killed
//!   worker's deliveries are claimed again; at start the worker frees leases of dead processes.
//! - Each webhook has at most `billhook.max_in_flight_per_webhook` requests in flight; the rest of
//!   its claimed deliveries wait in a per-webhook queue, so a dead endpoint never holds the senders.
//! - Outcomes are written in batches, in the same transaction as the fan-out and the next claim.
//! - Commits that record events some webhook subscribes to set the worker's latch (see `wake`);
//!   polling is the fallback.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic, PgTryBuilder};
use rand::Rng;
use serde_json::value::RawValue;

use crate::catalog::EventSet;
use crate::envelope::Envelope;
use crate::gucs;
use crate::http::{HttpSettings, Job, Outcome, Push, SenderPool};
use crate::plans::with_kept_plan;
use crate::retry::{NextStep, RetrySchedule};
use crate::sign::secret_key;

/// The worker's `PGPROC` number, for committing backends to set its latch; -1 when not running.
static WORKER_PROCNO: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"billhook_worker_procno") };
/// The OID of the database the worker serves: commits elsewhere have nothing for it.
static WORKER_DATABASE: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"billhook_worker_database") };
static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"billhook_worker_pid") };
static WORKER_STARTED_AT: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"billhook_worker_started_at") };
/// The events some enabled webhook of the worker's database subscribes to (`EventSet` bits), so
/// commits of other events do not wake it; every event until the worker has looked.
static SUBSCRIBED_EVENTS: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"billhook_subscribed_events") };
/// Counts commits that changed which webhooks are enabled or what they subscribe to.
static WEBHOOK_CHANGES: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"billhook_webhook_changes") };
/// Whether the configured database existed when the worker last looked (see `billhook_worker_main`).
static DATABASE_FOUND: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"billhook_worker_database_found") };

/// Set in `_PG_init` when loaded through shared_preload_libraries: only then do the worker and its
/// shared memory exist.
static PRELOADED: AtomicBool = AtomicBool::new(false);

const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The longest the worker waits for a lock; a round that would wait longer is tried again.
const LOCK_TIMEOUT: &std::ffi::CStr = c"1s";
/// How long the worker waits before it tries a failed round again.
const AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Extra time on every lease beyond the expected wait, so a busy worker never loses its own claims.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How often old deliveries are purged (more often when the retention itself is short).
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// While pushes are in flight, outcomes are written at most this often, in one transaction.
const ROUND_INTERVAL: Duration = Duration::from_millis(2);
/// Events fanned out per round: a backlog (the worker was away) is worked off between claims.
const FAN_OUT_EVENTS: i32 = 1000;
/// How soon the fan-out is tried again while a pass of another session holds it.
const FAN_OUT_RETRY: Duration = Duration::from_millis(100);
/// The worker holds at most this many batches of claimed deliveries that are not sent yet.
const HELD_BATCHES: usize = 4;
/// Entities (as stored) one claim takes at most, and push bodies the worker holds unsent at most:
/// an invoice of tens of thousands of lines edited many times costs rounds, not the server's memory.
const CLAIM_BYTES: usize = 8 << 20;
const HELD_BYTES: usize = 32 << 20;
/// A webhook's claim quota covers what it can send in this long (see `claim_quota`).
const CLAIM_HORIZON: Duration = Duration::from_secs(1);
/// The quota of a webhook with no pushes yet, in multiples of its in-flight cap.
const FIRST_QUOTA: f64 = 4.0;
const PURGE_BATCH: i64 = 1000;
/// Overdue invoices (and expired quotations) marked per sweep transaction.
const SWEEP_CHANGES: i32 = 1000;
const SWEEPS_PER_ROUND: usize = 10;
const PURGE_BATCHES_PER_ROUND: usize = 10;

pub fn register_in_postmaster() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(WORKER_PROCNO = AtomicI32::new(-1));
    pg_shmem_init!(WORKER_DATABASE = AtomicU32::new(0));
    pg_shmem_init!(WORKER_PID = AtomicI32::new(0));
    pg_shmem_init!(WORKER_STARTED_AT = AtomicI64::new(0));
    pg_shmem_init!(DATABASE_FOUND = AtomicBool::new(true));
    pg_shmem_init!(SUBSCRIBED_EVENTS = AtomicU32::new(EventSet::ALL.bits()));
    pg_shmem_init!(WEBHOOK_CHANGES = AtomicU64::new(0));
    BackgroundWorkerBuilder::new("billhook delivery worker")
        .set_type("billhook delivery worker")
        .set_library("billhook")
        .set_function("billhook_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

pub fn is_preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Sets the worker's latch if it serves this database. Called after a commit that recorded events
/// a webhook subscribes to (the worker's own sweeps too) or queued deliveries; costs two atomic
/// reads.
pub fn wake() {
    if !is_preloaded() || WORKER_DATABASE.get().load(Ordering::Acquire) != u32::from(unsafe { pg_sys::MyDatabaseId }) {
        return;
    }
    let procno = WORKER_PROCNO.get().load(Ordering::Acquire);
    if procno >= 0 {
        unsafe {
            let proc = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}

/// The events worth waking the worker for (all when it has not looked yet, or is not preloaded).
pub fn subscribed_events() -> EventSet {
    if !is_preloaded() {
        return EventSet::ALL;
    }
    EventSet::from_bits(SUBSCRIBED_EVENTS.get().load(Ordering::Acquire))
}

/// Called after a commit that changed webhooks, before `wake`: the worker looks at the
/// subscriptions again in its next round.
pub fn webhooks_changed() {
    if is_preloaded() {
        WEBHOOK_CHANGES.get().fetch_add(1, Ordering::AcqRel);
    }
}

pub struct WorkerStatus {
    pub pid: Option<i32>,
    pub started_at: Option<i64>,
}

pub fn status() -> WorkerStatus {
    if !is_preloaded() {
        return WorkerStatus { pid: None, started_at: None };
    }
    let pid = WORKER_PID.get().load(Ordering::Acquire);
    let alive = pid > 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() };
    WorkerStatus {
        pid: alive.then_some(pid),
        started_at: alive.then(|| WORKER_STARTED_AT.get().load(Ordering::Acquire)),
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn billhook_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm)) };
    let database = gucs::database();
    // A bgworker connects once and a missing database is FATAL, so the worker first waits for the
    // database while connected to no database, then restarts to connect to it.
    if !DATABASE_FOUND.get().swap(false, Ordering::AcqRel) {
        BackgroundWorker::connect_worker_to_spi(None, None);
        wait_for_database(&database);
        DATABASE_FOUND.get().store(true, Ordering::Release);
        unsafe { pg_sys::proc_exit(1) };
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    DATABASE_FOUND.get().store(true, Ordering::Release);
    // The worker's own writes (leases, outcomes, purges) need not wait for the WAL flush: if a crash
    // loses the last of them, those deliveries are sent again under the same key. Sweeps, which
    // create invoices, commit synchronously (see sweep_if_due).
    // Its queries touch a batch of rows by key; without hash and merge joins the planner cannot pick
    // a full scan of the outbox on tables filled faster than autovacuum analyses them.
    // Its hot statements are kept (plans.rs) with generic plans: planned once, not every round.
    // Whatever the cluster's or the database's defaults, its transactions are read-write READ
    // COMMITTED (a serializable default would make its SKIP LOCKED claims fail), its triggers fire,
    // it resolves names in pg_catalog only, no statement is cut short, and no lock is waited for
    // longer than LOCK_TIMEOUT (a round that hits it is tried again; see guarded_transaction).
    for (name, value) in [
        (c"synchronous_commit", c"off"),
        (c"enable_hashjoin", c"off"),
        (c"enable_mergejoin", c"off"),
        (c"plan_cache_mode", c"force_generic_plan"),
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
    SUBSCRIBED_EVENTS.get().store(EventSet::ALL.bits(), Ordering::Release);
    unsafe {
        WORKER_PID.get().store(pg_sys::MyProcPid, Ordering::Release);
        WORKER_STARTED_AT.get().store(pg_sys::GetCurrentTimestamp(), Ordering::Release);
        WORKER_PROCNO.get().store((*pg_sys::MyProc).pgprocno, Ordering::Release);
        WORKER_DATABASE.get().store(u32::from(pg_sys::MyDatabaseId), Ordering::Release);
    }
    log!("billhook delivery worker started for database \"{database}\"");
    Worker::new(database).run();
    WORKER_PROCNO.get().store(-1, Ordering::Release);
    // Exit code 1 has the postmaster start the worker again (unless it is shutting down), so
    // pg_terminate_backend restarts the worker rather than ending deliveries for good.
    unsafe { pg_sys::proc_exit(1) };
}

/// Set while the worker runs a transaction: SIGTERM then interrupts the statement (a lock wait
/// among others) the way it does for any backend; between transactions the loop notices the
/// request and stops after recording the outcomes it has.
static IN_TRANSACTION: AtomicBool = AtomicBool::new(false);

#[pg_guard]
unsafe extern "C-unwind" fn on_sigterm(_signal: i32) {
    let saved_errno = *libc::__errno_location();
    (&raw mut pg_sys::ShutdownRequestPending).write_volatile(1);
    if IN_TRANSACTION.load(Ordering::SeqCst) {
        (&raw mut pg_sys::InterruptPending).write_volatile(1);
        (&raw mut pg_sys::ProcDiePending).write_volatile(1);
    }
    pg_sys::SetLatch(pg_sys::MyLatch);
    *libc::__errno_location() = saved_errno;
}

/// Runs `f` in a transaction of its own. An ERROR (a lock wait past lock_timeout, say) rolls the
/// transaction back and is logged as a WARNING instead of ending the worker: the caller gets None
/// and tries again later.
fn guarded_transaction<R>(f: impl FnOnce() -> R) -> Option<R> {
    IN_TRANSACTION.store(true, Ordering::SeqCst);
    let f = AssertUnwindSafe(f);
    let result = PgTryBuilder::new(|| Some(BackgroundWorker::transaction(f)))
        .catch_others(|error| {
            unsafe { pg_sys::AbortCurrentTransaction() };
            let message = match &error {
                pgrx::pg_sys::panic::CaughtError::PostgresError(report)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(report)
                | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: report, .. } => report.message().to_string(),
            };
            warning!("billhook delivery worker: {message}; trying again");
            None
        })
        .execute();
    IN_TRANSACTION.store(false, Ordering::SeqCst);
    result
}

fn database_exists(database: &str) -> bool {
    let name = std::ffi::CString::new(database).unwrap_or_default();
    BackgroundWorker::transaction(|| unsafe { pg_sys::get_database_oid(name.as_ptr(), true) } != pg_sys::InvalidOid)
}

fn wait_for_database(database: &str) {
    loop {
        if database_exists(database) {
            return;
        }
        if wait(None, gucs::poll_interval()) == Woken::ShutDown || reload_settings_if_asked() {
            unsafe { pg_sys::proc_exit(1) };
        }
    }
}

fn shutdown_requested() -> bool {
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Applies a pending SIGHUP; true if it changed the worker's database.
fn reload_settings_if_asked() -> bool {
    if !BackgroundWorker::sighup_received() {
        return false;
    }
    let before = gucs::database();
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    gucs::database() != before
}

/// Why `wait` returned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Woken {
    ShutDown,
    /// The latch (a commit, a signal) or the timeout: there may be new events to fan out.
    CommitOrTimeout,
    /// Only the senders' socket: outcomes to record.
    Outcomes,
}

/// Sleeps until the latch is set (a commit, a signal), `socket` is readable, or `timeout` passes
/// (rounded up to whole milliseconds).
fn wait(socket: Option<std::os::fd::RawFd>, timeout: Duration) -> Woken {
    let mut events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
    if socket.is_some() {
        events |= pg_sys::WL_SOCKET_READABLE;
    }
    let happened = unsafe {
        let happened = pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events as i32,
            socket.unwrap_or(-1),
            timeout.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        // Absorbs ProcSignalBarriers among other interrupts: DROP DATABASE of any database in the
        // cluster waits until every backend, this worker included, has absorbed one.
        pg_sys::check_for_interrupts!();
        happened as u32
    };
    if shutdown_requested() {
        Woken::ShutDown
    } else if happened & (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT) != 0 {
        Woken::CommitOrTimeout
    } else {
        Woken::Outcomes
    }
}

/// What travels with a push to the sender threads and back.
struct Claimed {
    delivery_id: i64,
    webhook_id: i64,
    /// The push body's size, for the worker's memory budget.
    bytes: usize,
    attempts_before: i32,
    /// The extension instance it was claimed from; outcomes of a dropped extension are discarded.
    generation: pg_sys::Oid,
}

struct Worker {
    database: String,
    pool: Option<SenderPool<Claimed>>,
    generation: pg_sys::Oid,
    /// A round's transaction found another extension instance than `generation` (or none).
    generation_changed: bool,
    /// Claimed and not yet returned by the senders, per webhook.
    held: HashMap<i64, i32>,
    /// The bytes of push bodies behind `held`.
    held_bytes: usize,
    /// The deliveries behind `held`: a claim that returns one of them again (its lease ran out
    /// while it waited) must not queue a second push of it.
    held_deliveries: HashSet<i64>,
    /// Claimed deliveries taken back from the senders unsent: their leases are released in the
    /// next round, so they are claimed again at once.
    unsent: Vec<i64>,
    /// Pushes handed to the senders and not yet returned, of any extension generation.
    in_flight: usize,
    outcomes: Vec<(Claimed, Outcome)>,
    /// The installed extension version last warned about as not this library's.
    reported_version: Option<String>,
    /// The `WEBHOOK_CHANGES` count when the worker last published `SUBSCRIBED_EVENTS`.
    subscriptions_seen: Option<u64>,
    /// Subscriptions are also looked at every poll interval, should a change have gone uncounted
    /// (a prepared transaction is committed by another backend).
    subscriptions: Periodic,
    purges: Periodic,
    sweeps: Periodic,
    last_round: Instant,
}

impl Worker {
    fn new(database: String) -> Worker {
        Worker {
            database,
            pool: None,
            generation: pg_sys::InvalidOid,
            generation_changed: true,
            held: HashMap::new(),
            held_bytes: 0,
            held_deliveries: HashSet::new(),
            unsent: Vec::new(),
            in_flight: 0,
            outcomes: Vec::new(),
            reported_version: None,
            subscriptions_seen: None,
            subscriptions: Periodic::default(),
            purges: Periodic::default(),
            sweeps: Periodic::default(),
            last_round: Instant::now(),
        }
    }

    fn run(mut self) {
        let mut released_stale_leases = false;
        // Outcome rounds skip the fan-out: only commits (and the poll) bring new events.
        let mut fan_out_due = true;
        loop {
            if shutdown_requested() {
                break;
            }
            if reload_settings_if_asked() && gucs::database() != self.database {
                let database = gucs::database();
                log!("billhook.database changed to \"{database}\": restarting the worker");
                DATABASE_FOUND.get().store(database_exists(&database), Ordering::Release);
                unsafe { pg_sys::proc_exit(1) };
            }
            // First, so that the senders' last outcomes let new settings take effect in this pass.
            self.collect_outcomes();
            let settings = gucs::http_settings();
            // New HTTP settings take effect once nothing is in flight on the old senders: the
            // pushes they have not started are handed back (their leases released in the next
            // round), so only those already sending are waited for.
            if let Some(pool) = self.pool.as_ref().filter(|p| *p.settings() != settings) {
                for tag in pool.discard_waiting() {
                    self.in_flight -= 1;
                    self.release(&tag);
                    self.unsent.push(tag.delivery_id);
                }
            }
            if self.pool.as_ref().is_none_or(|p| *p.settings() != settings) && self.in_flight == 0 {
                self.pool = None;
                match SenderPool::start(settings.clone()) {
                    Ok(pool) => self.pool = Some(pool),
                    Err(e) => error!("billhook could not start its sender threads: {e}"),
                }
            }

            // An idle worker goes to the database at once (a commit woke it). While pushes are in
            // flight, rounds are batched: at most one per ROUND_INTERVAL however many commits and
            // outcomes arrive meanwhile, unless enough outcomes wait to fill half a batch.
            let batch = gucs::batch_size();
            let since_round = self.last_round.elapsed();
            let round = if self.in_flight == 0 || since_round >= ROUND_INTERVAL || self.outcomes.len() >= batch / 2 {
                self.last_round = Instant::now();
                // Rounds check the extension inside their own transaction; it is looked up afresh
                // only when one of them found it changed, or while there is none.
                if self.generation_changed || self.generation == pg_sys::InvalidOid {
                    self.generation_changed = false;
                    let generation = self.current_generation();
                    if generation != self.generation {
                        self.forget_everything(generation);
                        released_stale_leases = false;
                    }
                    if generation == pg_sys::InvalidOid {
                        if wait(None, gucs::poll_interval()) != Woken::ShutDown {
                            continue;
                        }
                        break;
                    }
                }
                if !released_stale_leases {
                    released_stale_leases = self.release_stale_leases();
                }
                let accepting = self.pool.as_ref().is_some_and(|p| *p.settings() == settings);
                let round = self.record_and_claim(&settings, accepting, fan_out_due);
                match round.fan_out {
                    FanOut::Took(events) => fan_out_due = events == i64::from(FAN_OUT_EVENTS),
                    FanOut::Busy | FanOut::NotDue => {}
                }
                self.sweep_if_due();
                self.purge_if_due();
                round
            } else {
                Round::idle(Some(ROUND_INTERVAL - since_round))
            };

            // A full batch means more is probably due: go round again as soon as the interval
            // allows. Otherwise sleep until an outcome arrives, a commit wakes us, or the next
            // retry falls due.
            if round.claimed < batch && !round.more_events() {
                let socket = self.pool.as_ref().map(|p| p.wake_fd());
                let timeout = [
                    round.next_due,
                    self.purges.due_in(Self::purge_every()),
                    self.sweeps.due_in(gucs::schedule_interval()),
                ]
                .into_iter()
                .flatten()
                .fold(gucs::poll_interval(), Duration::min);
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
        let generation = self.generation;
        if generation != pg_sys::InvalidOid && generation == self.current_generation() {
            let settings = gucs::http_settings();
            self.record_and_claim(&settings, false, false);
        }
        log!("billhook delivery worker stopped");
    }

    /// The extension's OID in this database, or InvalidOid while it is not installed or is another
    /// version than this library's (installed before an upgrade of billhook and not yet updated:
    /// the worker waits for `ALTER EXTENSION billhook UPDATE`, saying so once).
    fn current_generation(&mut self) -> pg_sys::Oid {
        let (oid, version) = BackgroundWorker::transaction(|| {
            let oid = unsafe { pg_sys::get_extension_oid(c"billhook".as_ptr(), true) };
            let version = Spi::get_one::<String>("SELECT max(extversion) FROM pg_catalog.pg_extension WHERE extname = 'billhook'")
                .unwrap_or_else(|e| error!("billhook could not read its extension version: {e}"));
            (oid, version)
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

    fn forget_everything(&mut self, generation: pg_sys::Oid) {
        self.generation = generation;
        self.subscriptions_seen = None;
        SUBSCRIBED_EVENTS.get().store(EventSet::ALL.bits(), Ordering::Release);
        self.held.clear();
        self.held_bytes = 0;
        self.held_deliveries.clear();
        self.outcomes.clear();
        // Queued pushes belong to the old extension: drop them; those already sending return later
        // and are discarded.
        if let Some(pool) = &self.pool {
            self.in_flight -= pool.discard_waiting().len();
        }
        self.unsent.clear();
    }

    /// Forgets a claimed delivery the senders gave back.
    fn release(&mut self, tag: &Claimed) {
        decrement(&mut self.held, tag.webhook_id);
        self.held_bytes -= tag.bytes;
        self.held_deliveries.remove(&tag.delivery_id);
    }

    fn collect_outcomes(&mut self) {
        let Some(pool) = &self.pool else { return };
        for done in pool.take_done() {
            self.in_flight -= 1;
            if done.tag.generation == self.generation {
                self.release(&done.tag);
                self.outcomes.push((done.tag, done.outcome));
            }
        }
    }

    /// Frees the leases of dead processes; true once done.
    fn release_stale_leases(&self) -> bool {
        let ended = extension_transaction(self.generation, || {
            Spi::run(
                "UPDATE billhook.deliveries AS d SET locked_until = NULL, locked_by = NULL
                 FROM (SELECT s.id FROM billhook.deliveries AS s
                       WHERE s.locked_by IS NOT NULL AND s.locked_by <> pg_backend_pid()
                         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = s.locked_by)
                       FOR UPDATE OF s SKIP LOCKED) AS stale
                 WHERE d.id = stale.id",
            )
            .unwrap_or_else(|e| error!("billhook could not release stale leases: {e}"))
        });
        matches!(ended, Ended::Committed(()))
    }

    /// One transaction: write the outcomes gathered so far, fan out new events, then claim more if
    /// there is room.
    fn record_and_claim(&mut self, settings: &HttpSettings, accepting: bool, fan_out_due: bool) -> Round {
        let outcomes = std::mem::take(&mut self.outcomes);
        let unsent = std::mem::take(&mut self.unsent);
        let schedule = gucs::retry_schedule();
        let batch = gucs::batch_size();
        let held_total: i32 = self.held.values().sum();
        let bytes = HELD_BYTES.saturating_sub(self.held_bytes).min(CLAIM_BYTES);
        let room = if accepting && bytes > 0 {
            (HELD_BATCHES * batch).saturating_sub(held_total as usize).min(batch)
        } else {
            0
        };
        if outcomes.is_empty() && unsent.is_empty() && room == 0 {
            return Round::idle(None);
        }
        let paused = self.pool.as_ref().map(|p| p.paused_webhooks()).unwrap_or_default();
        let paces = self.pool.as_ref().map(|p| p.paces()).unwrap_or_default();
        let quotas = self.claim_quotas(settings, batch, &paused, &paces);
        let generation = self.generation;
        let webhook_changes = WEBHOOK_CHANGES.get().load(Ordering::Acquire);
        let look_at_subscriptions = self.subscriptions.run_now(Some(gucs::poll_interval()))
            || self.subscriptions_seen != Some(webhook_changes);
        let ended = extension_transaction(generation, || {
            Spi::connect_mut(|client| {
                let unwritten = if outcomes.is_empty() { Vec::new() } else { record_outcomes(client, &outcomes, &schedule) };
                if !unsent.is_empty() {
                    release_leases(client, &unsent);
                }
                // Before the fan-out: an event committed before the new set is published is one
                // this round's fan-out sees.
                if look_at_subscriptions {
                    publish_subscribed_events(client);
                }
                let fanned_out = if fan_out_due { fan_out(client) } else { FanOut::NotDue };
                if room == 0 {
                    return (unwritten, Vec::new(), fanned_out, None);
                }
                let claimed = claim(client, Budget { rows: room, bytes, batch }, &quotas, settings);
                // While pushes are in flight, their outcomes bring the next round anyway.
                let next_due = if claimed.is_empty() { next_due(client, &paused) } else { None };
                (unwritten, claimed, fanned_out, next_due)
            })
        });
        let (unwritten, claimed, fanned_out, next_due) = match ended {
            Ended::Committed(done) => done,
            Ended::ExtensionChanged => {
                self.generation_changed = true;
                return Round::idle(None);
            }
            Ended::Failed => {
                self.outcomes = outcomes;
                self.unsent.extend(unsent);
                return Round::idle(Some(AFTER_FAILURE));
            }
        };
        // Outcomes of deliveries another session holds locked are written in a later round.
        if !unwritten.is_empty() {
            let unwritten: HashSet<i64> = unwritten.into_iter().collect();
            self.outcomes.extend(outcomes.into_iter().filter(|(c, _)| unwritten.contains(&c.delivery_id)));
        }
        if look_at_subscriptions {
            self.subscriptions_seen = Some(webhook_changes);
        }
        let pause_ends = self.pool.as_ref().and_then(|p| p.next_pause_end());
        let fan_out_again = (fanned_out == FanOut::Busy).then_some(FAN_OUT_RETRY);
        let round = Round {
            claimed: claimed.len(),
            fan_out: fanned_out,
            next_due: [next_due, pause_ends, fan_out_again].into_iter().flatten().min(),
        };
        let jobs: Vec<Job<Claimed>> = claimed
            .into_iter()
            .filter(|row| self.held_deliveries.insert(row.delivery_id))
            .map(|row| {
                *self.held.entry(row.webhook_id).or_default() += 1;
                self.held_bytes += row.push.body.len();
                let tag = Claimed {
                    delivery_id: row.delivery_id,
                    webhook_id: row.webhook_id,
                    bytes: row.push.body.len(),
                    attempts_before: row.attempts,
                    generation,
                };
                Job { webhook_id: row.webhook_id, tag, push: row.push }
            })
            .collect();
        if let Some(pool) = &self.pool {
            self.in_flight += jobs.len();
            pool.submit(jobs);
        }
        round
    }

    /// Each known webhook's claim quota with what it holds; paused webhooks get none.
    fn claim_quotas(
        &self,
        settings: &HttpSettings,
        batch: usize,
        paused: &[i64],
        paces: &HashMap<i64, Duration>,
    ) -> Vec<Quota> {
        let webhooks: HashSet<i64> = self.held.keys().chain(paces.keys()).chain(paused).copied().collect();
        webhooks
            .into_iter()
            .map(|webhook| Quota {
                webhook_id: webhook,
                held: self.held.get(&webhook).copied().unwrap_or(0),
                quota: if paused.contains(&webhook) {
                    0
                } else {
                    claim_quota(paces.get(&webhook).copied(), settings.max_in_flight_per_webhook, batch)
                },
            })
            .collect()
    }

    fn purge_every() -> Option<Duration> {
        Some(PURGE_EVERY.min(gucs::retention()? / 2))
    }

    /// Runs the schedules when due, one transaction per call of run_schedules, again at once (up to
    /// SWEEPS_PER_ROUND) while a call reached its max_changes.
    fn sweep_if_due(&mut self) {
        if !self.sweeps.run_now(gucs::schedule_interval()) {
            return;
        }
        for _ in 0..SWEEPS_PER_ROUND {
            let ended = extension_transaction(self.generation, || {
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
        let Some(retention) = gucs::retention() else { return };
        if !self.purges.run_now(Self::purge_every()) {
            return;
        }
        let age = format!("{} seconds", retention.as_secs());
        for _ in 0..PURGE_BATCHES_PER_ROUND {
            let Ended::Committed(purged) = extension_transaction(self.generation, || purge_batch(&age)) else { break };
            if purged < PURGE_BATCH {
                break;
            }
        }
    }
}

/// How a transaction of the worker on the extension's tables ended.
enum Ended<R> {
    Committed(R),
    /// The extension is no longer the one the worker knew (dropped, or dropped and created again).
    ExtensionChanged,
    /// An error rolled it back (logged as a WARNING).
    Failed,
}

/// Runs `f` in a guarded transaction holding a share lock on the extension, so a concurrent DROP
/// EXTENSION waits for it at its first step instead of deadlocking with it over the tables.
fn extension_transaction<R>(generation: pg_sys::Oid, f: impl FnOnce() -> R) -> Ended<R> {
    let ended = guarded_transaction(|| {
        unsafe {
            pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, generation, 0, pg_sys::AccessShareLock as i32);
        }
        let current = unsafe { pg_sys::get_extension_oid(c"billhook".as_ptr(), true) };
        (current == generation).then(f)
    });
    match ended {
        Some(Some(result)) => Ended::Committed(result),
        Some(None) => Ended::ExtensionChanged,
        None => Ended::Failed,
    }
}

/// A job the worker runs every so often (first right after start).
#[derive(Default)]
struct Periodic {
    last_run: Option<Instant>,
}

impl Periodic {
    /// Time until the next run; None when the job is off (`every` is None).
    fn due_in(&self, every: Option<Duration>) -> Option<Duration> {
        let every = every?;
        Some(self.last_run.map_or(Duration::ZERO, |at| every.saturating_sub(at.elapsed())))
    }

    /// Whether to run now; if so, counts this as the run.
    fn run_now(&mut self, every: Option<Duration>) -> bool {
        let due = self.due_in(every) == Some(Duration::ZERO);
        if due {
            self.last_run = Some(Instant::now());
        }
        due
    }
}

struct Round {
    claimed: usize,
    fan_out: FanOut,
    /// How long until the earliest pending delivery nobody holds falls due (or a paused endpoint
    /// may be sent to again, or a failed round is tried again).
    next_due: Option<Duration>,
}

impl Round {
    /// A round that did not go to the database, or failed there.
    fn idle(next_due: Option<Duration>) -> Round {
        Round { claimed: 0, fan_out: FanOut::NotDue, next_due }
    }

    /// The fan-out left events for the next round.
    fn more_events(&self) -> bool {
        self.fan_out == FanOut::Took(i64::from(FAN_OUT_EVENTS))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FanOut {
    NotDue,
    /// Took this many events.
    Took(i64),
    /// Another session's pass holds the fan-out; the worker does not wait for it.
    Busy,
}

/// What a webhook may claim: its quota, and how many of its deliveries the worker holds.
struct Quota {
    webhook_id: i64,
    held: i32,
    quota: i32,
}

/// A webhook may hold as many claimed deliveries as it can send within CLAIM_HORIZON at the pace
/// its recent pushes took, at least its in-flight cap (so a dead endpoint holds only that many and
/// leaves the claims to the others) and at most half a batch. A webhook with no pushes yet starts
/// at FIRST_QUOTA times the cap.
fn claim_quota(pace: Option<Duration>, max_in_flight: usize, batch: usize) -> i32 {
    let cap = max_in_flight as f64;
    let sendable = match pace {
        Some(pace) => cap * CLAIM_HORIZON.as_secs_f64() / pace.as_secs_f64().max(1e-6),
        None => cap * FIRST_QUOTA,
    };
    sendable.min((batch / 2) as f64).max(cap) as i32
}

/// Publishes the events some enabled webhook subscribes to. The change count is read before this
/// statement's snapshot is taken, so a change it misses is counted after: the next round looks again.
fn publish_subscribed_events(client: &mut pgrx::spi::SpiClient<'_>) {
    let names = client
        .select(
            "SELECT coalesce(array_agg(DISTINCT e.name), '{}')
             FROM billhook.webhooks AS w CROSS JOIN LATERAL unnest(w.subscribed_events) AS e(name)
             WHERE w.enabled",
            None,
            &[],
        )
        .and_then(|rows| rows.first().get_one::<Vec<String>>())
        .unwrap_or_else(|e| error!("billhook could not read the webhooks' subscriptions: {e}"))
        .unwrap_or_default();
    SUBSCRIBED_EVENTS.get().store(EventSet::of(&names).bits(), Ordering::Release);
}

/// Creates the deliveries of events committed since the last fan-out, unless a pass another
/// session started is still open.
fn fan_out(client: &mut pgrx::spi::SpiClient<'_>) -> FanOut {
    with_kept_plan("SELECT events FROM billhook.fan_out($1, wait => false)", &[pg_sys::BuiltinOid::INT4OID.oid()], |plan| {
        client.update(plan, None, &[FAN_OUT_EVENTS.into()])?.first().get_one::<i64>()
    })
    .unwrap_or_else(|e| error!("billhook could not fan out events: {e}"))
    .map_or(FanOut::Busy, FanOut::Took)
}

/// How long until the soonest unleased pending delivery of an enabled webhook that is not paused
/// falls due.
fn next_due(client: &mut pgrx::spi::SpiClient<'_>, paused: &[i64]) -> Option<Duration> {
    let seconds = client
        .select(
            "SELECT extract(epoch FROM min(soonest.at) - now())::float8
             FROM billhook.webhooks AS w
             CROSS JOIN LATERAL (
                 SELECT d.next_attempt_at FROM billhook.deliveries AS d
                 WHERE d.webhook_id = w.id AND d.status = 'pending'
                   AND (d.locked_until IS NULL OR d.locked_until < now())
                 ORDER BY d.next_attempt_at LIMIT 1) AS soonest(at)
             WHERE w.enabled AND w.id <> ALL ($1)",
            None,
            &[paused.to_vec().into()],
        )
        .and_then(|rows| rows.first().get_one::<f64>())
        .unwrap_or_else(|e| error!("billhook could not read the next due delivery: {e}"))?;
    Some(Duration::from_secs_f64(seconds.max(0.0)))
}

fn decrement(counts: &mut HashMap<i64, i32>, key: i64) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n <= 0 {
            counts.remove(&key);
        }
    }
}

struct ClaimedRow {
    delivery_id: i64,
    webhook_id: i64,
    attempts: i32,
    push: Push,
}

/// What one claim may take: `rows` deliveries, entities up to `bytes` as stored, with quotas for a
/// batch size of `batch`.
struct Budget {
    rows: usize,
    bytes: usize,
    batch: usize,
}

/// Claims up to `budget.rows` due deliveries of enabled webhooks, oldest first per webhook, each
/// webhook up to its quota (`quotas`; FIRST_QUOTA for the others), skipping rows other sessions
/// hold, and stops before the entities reach `budget.bytes` as stored (one is always taken, however
/// large). Each lease covers the wait behind the webhook's earlier claims at the in-flight cap, plus
/// the request itself.
fn claim(client: &mut pgrx::spi::SpiClient<'_>, budget: Budget, quotas: &[Quota], settings: &HttpSettings) -> Vec<ClaimedRow> {
    const CLAIM: &str = "
        WITH held AS (
            SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[]) AS h(webhook_id, held, quota)
        ), chosen AS (
            SELECT d.id, d.event_id, coalesce(h.held, 0) + d.position AS position
            FROM billhook.webhooks AS w
            LEFT JOIN held AS h ON h.webhook_id = w.id
            CROSS JOIN LATERAL (
                SELECT due.id, due.event_id, row_number() OVER (ORDER BY due.next_attempt_at, due.id) AS position
                FROM (SELECT d.id, d.event_id, d.next_attempt_at
                      FROM billhook.deliveries AS d
                      WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                        AND (d.locked_until IS NULL OR d.locked_until < now())
                      ORDER BY d.next_attempt_at
                      LIMIT least(coalesce(h.quota, $4) - coalesce(h.held, 0), $5)
                      FOR UPDATE OF d SKIP LOCKED) AS due
            ) AS d
            WHERE w.enabled AND coalesce(h.held, 0) < coalesce(h.quota, $4)
            LIMIT $5
        ), affordable AS (
            -- pg_column_size reads a large entity's TOAST pointer, not the entity.
            SELECT c.id, c.position
            FROM (SELECT c.id, c.position, pg_column_size(e.entity) AS size,
                         sum(pg_column_size(e.entity)) OVER (ORDER BY c.position, c.id) AS running
                  FROM chosen AS c JOIN billhook.events AS e ON e.id = c.event_id) AS c
            WHERE c.running - c.size < $9
        )
        UPDATE billhook.deliveries AS d
        SET locked_by = pg_backend_pid(),
            locked_until = now() + make_interval(secs => $6::float8 * (chosen.position / $7 + 1) + $8::float8)
        FROM affordable AS chosen, billhook.events AS e, billhook.webhooks AS w
        WHERE d.id = chosen.id AND e.id = d.event_id AND w.id = d.webhook_id
        RETURNING d.id AS delivery_id, d.webhook_id, d.attempts, d.idempotency_key::text, w.url, w.token,
                  w.signing_secret,
                  CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_signing_secret END AS previous_secret,
                  e.id AS event_id, e.administration_id, e.event_type, e.entity_type, e.entity_id, e.state,
                  billhook.json_time(e.occurred_at) AS occurred_at, e.entity::text AS entity";
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
    ];
    use pg_sys::BuiltinOid::*;
    let types = [INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, INT4OID, INT8OID, FLOAT8OID, INT4OID, FLOAT8OID, INT8OID]
        .map(|t| t.oid());
    with_kept_plan(CLAIM, &types, |plan| client.update(plan, None, &args).map(claimed_rows))
        .unwrap_or_else(|e| error!("billhook could not claim deliveries: {e}"))
}

fn claimed_rows(rows: pgrx::spi::SpiTupleTable<'_>) -> Vec<ClaimedRow> {
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let optional = |name: &str| -> Option<String> {
            row.get_by_name::<String, _>(name).unwrap_or_else(|e| error!("claimed column {name}: {e}"))
        };
        let required = |name: &str| optional(name).unwrap_or_else(|| error!("claimed column {name} is NULL"));
        let id = |name: &str| -> i64 {
            row.get_by_name::<i64, _>(name).ok().flatten().unwrap_or_else(|| error!("claimed column {name} is NULL"))
        };
        let webhook_id = id("webhook_id");
        let entity = RawValue::from_string(required("entity")).unwrap_or_else(|e| error!("event entity is not JSON: {e}"));
        let state = optional("state");
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
        }
        .to_json();
        let signing_keys = [optional("signing_secret"), optional("previous_secret")]
            .into_iter()
            .flatten()
            .filter_map(|secret| secret_key(&secret))
            .collect();
        claimed.push(ClaimedRow {
            delivery_id: id("delivery_id"),
            webhook_id,
            attempts: row.get_by_name::<i32, _>("attempts").ok().flatten().unwrap_or_default(),
            push: Push { url: required("url"), body, idempotency_key: required("idempotency_key"), signing_keys },
        });
    }
    claimed
}

/// Writes a batch of outcomes: the deliveries' status and schedule, one attempt row each, and the
/// webhooks' last status and body. Outcomes for deliveries this worker no longer holds are ignored.
/// Rows another session holds locked (an open redeliver, an open update_webhook) are skipped, not
/// waited for: returns the outcomes that could not be written for that reason, to try again.
fn record_outcomes(client: &mut pgrx::spi::SpiClient<'_>, outcomes: &[(Claimed, Outcome)], schedule: &RetrySchedule) -> Vec<i64> {
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
        ), latest AS (
            SELECT DISTINCT ON (webhook_id) webhook_id, http_status, response_body
            FROM updated
            ORDER BY webhook_id, attempted_at DESC, id DESC
        ), webhook_status AS (
            -- The last status is for people to look at: a webhook row someone holds locked keeps
            -- the one before.
            UPDATE billhook.webhooks AS w
            SET last_http_status = latest.http_status, last_http_body = latest.response_body
            FROM latest
            WHERE w.id = latest.webhook_id
              AND w.id IN (SELECT f.id FROM billhook.webhooks AS f WHERE f.id IN (SELECT webhook_id FROM latest)
                           FOR UPDATE OF f SKIP LOCKED)
        )
        SELECT count(*) FROM updated";
    const STILL_HELD: &str = "SELECT d.id FROM billhook.deliveries AS d
                              WHERE d.id = ANY ($1) AND d.locked_by = pg_backend_pid()";
    let mut rng = rand::rng();
    let steps: Vec<NextStep> = outcomes
        .iter()
        .map(|(claimed, outcome)| {
            let attempts_made = (claimed.attempts_before + 1) as u32;
            schedule.next_step(outcome.succeeded(), attempts_made, rng.random_range(-1.0..=1.0), outcome.retry_after)
        })
        .collect();
    let ids: Vec<i64> = outcomes.iter().map(|(c, _)| c.delivery_id).collect();
    let statuses: Vec<Option<i32>> = outcomes.iter().map(|(_, o)| o.http_status.map(i32::from)).collect();
    let bodies: Vec<Option<String>> = outcomes.iter().map(|(_, o)| o.response_body.clone()).collect();
    let errors: Vec<Option<String>> = outcomes.iter().map(|(_, o)| o.error.clone()).collect();
    let durations: Vec<i32> =
        outcomes.iter().map(|(_, o)| o.duration.as_millis().min(i32::MAX as u128) as i32).collect();
    let started: Vec<pgrx::datum::TimestampWithTimeZone> = outcomes.iter().map(|(_, o)| timestamp(o.started_at)).collect();
    let states: Vec<&str> = steps.iter().map(|s| s.status()).collect();
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
    ];
    use pg_sys::BuiltinOid::*;
    let types = [INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID,
                 FLOAT8ARRAYOID]
        .map(|t| t.oid());
    let written = with_kept_plan(RECORD, &types, |plan| client.update(plan, None, &args)?.first().get_one::<i64>())
        .unwrap_or_else(|e| error!("billhook could not record delivery outcomes: {e}"))
        .unwrap_or(0);
    if written == outcomes.len() as i64 {
        return Vec::new();
    }
    // Rare: some rows were locked by another session, or are no longer this worker's.
    client
        .select(STILL_HELD, None, &[ids.into()])
        .and_then(|rows| rows.into_iter().map(|row| row.get::<i64>(1).map(Option::unwrap_or_default)).collect())
        .unwrap_or_else(|e| error!("billhook could not read its leases: {e}"))
}

/// Makes deliveries this worker claimed and did not send claimable again.
fn release_leases(client: &mut pgrx::spi::SpiClient<'_>, deliveries: &[i64]) {
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

fn timestamp(at: SystemTime) -> pgrx::datum::TimestampWithTimeZone {
    // Postgres counts microseconds from 2000-01-01.
    const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    let micros = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
        - POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000;
    pgrx::datum::TimestampWithTimeZone::try_from(micros).expect("a time after 2000 is a valid timestamptz")
}

/// Deletes one batch of succeeded deliveries older than `age`, then of events that the fan-out has
/// passed and that have no delivery left (billhook.purge). Returns how many deliveries went.
fn purge_batch(age: &str) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT deliveries FROM billhook.purge($1::interval, $2)",
        &[age.into(), (PURGE_BATCH as i32).into()],
    )
    .unwrap_or_else(|e| error!("billhook could not purge old deliveries: {e}"))
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_webhook_may_hold_half_a_batch_a_dead_one_only_its_cap() {
        assert_eq!(claim_quota(Some(Duration::from_millis(1)), 8, 500), 250);
        assert_eq!(claim_quota(Some(Duration::from_millis(100)), 8, 500), 80);
        assert_eq!(claim_quota(Some(Duration::from_secs(10)), 8, 500), 8);
        assert_eq!(claim_quota(Some(Duration::ZERO), 8, 500), 250);
        assert_eq!(claim_quota(None, 8, 500), 32);
        assert_eq!(claim_quota(None, 8, 10), 8, "never below the in-flight cap");
    }
}
