//! What the worker shares with ordinary backends: its registration with the postmaster, and the
//! shared-memory atomics through which committing backends wake it (`wake`), learn which events
//! are worth waking it for (`subscribed_events`) and tell it webhooks changed (`webhooks_changed`).
//! These are the only worker functions called outside the worker process.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use crate::catalog::EventSet;

/// The worker's `PGPROC` number, for committing backends to set its latch; -1 when not running.
static WORKER_PROCNO: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"billhook_worker_procno") };
/// The OID of the database the worker serves: commits elsewhere have nothing for it.
static WORKER_DATABASE: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"billhook_worker_database") };
static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"billhook_worker_pid") };
static WORKER_STARTED_AT: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"billhook_worker_started_at") };
/// Times the worker connected to its database since the server started.
static WORKER_STARTS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"billhook_worker_starts") };
/// The events some enabled (or held) webhook of the worker's database subscribes to (`EventSet` bits), so
/// commits of other events do not wake it; every event until the worker has looked.
static SUBSCRIBED_EVENTS: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"billhook_subscribed_events") };
/// Counts commits that changed which webhooks are enabled or what they subscribe to.
static WEBHOOK_CHANGES: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"billhook_webhook_changes") };
/// Whether the configured database existed when the worker last looked (see `billhook_worker_main`).
static DATABASE_FOUND: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"billhook_worker_database_found") };

/// Set in `_PG_init` when loaded through shared_preload_libraries: only then do the worker and its
/// shared memory exist.
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub fn register_in_postmaster() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(WORKER_PROCNO = AtomicI32::new(-1));
    pg_shmem_init!(WORKER_DATABASE = AtomicU32::new(0));
    pg_shmem_init!(WORKER_PID = AtomicI32::new(0));
    pg_shmem_init!(WORKER_STARTED_AT = AtomicI64::new(0));
    pg_shmem_init!(WORKER_STARTS = AtomicU64::new(0));
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
    pub starts: u64,
}

pub fn status() -> WorkerStatus {
    if !is_preloaded() {
        return WorkerStatus { pid: None, started_at: None, starts: 0 };
    }
    let pid = WORKER_PID.get().load(Ordering::Acquire);
    let alive = pid > 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() };
    WorkerStatus {
        pid: alive.then_some(pid),
        started_at: alive.then(|| WORKER_STARTED_AT.get().load(Ordering::Acquire)),
        starts: WORKER_STARTS.get().load(Ordering::Acquire),
    }
}

/// Called by the worker once connected: backends of its database may wake it from now on, for
/// every event until it has published the subscriptions.
pub(super) fn announce_started() {
    SUBSCRIBED_EVENTS.get().store(EventSet::ALL.bits(), Ordering::Release);
    unsafe {
        WORKER_PID.get().store(pg_sys::MyProcPid, Ordering::Release);
        WORKER_STARTED_AT.get().store(pg_sys::GetCurrentTimestamp(), Ordering::Release);
        WORKER_PROCNO.get().store((*pg_sys::MyProc).pgprocno, Ordering::Release);
        WORKER_DATABASE.get().store(u32::from(pg_sys::MyDatabaseId), Ordering::Release);
    }
    WORKER_STARTS.get().fetch_add(1, Ordering::AcqRel);
}

pub(super) fn announce_stopped() {
    WORKER_PROCNO.get().store(-1, Ordering::Release);
}

pub(super) fn publish_subscribed_events(events: EventSet) {
    SUBSCRIBED_EVENTS.get().store(events.bits(), Ordering::Release);
}

/// How many webhook changes have been committed so far (see `webhooks_changed`).
pub(super) fn webhook_changes() -> u64 {
    WEBHOOK_CHANGES.get().load(Ordering::Acquire)
}

/// Whether the previous start found the database, clearing the flag: a start that dies before
/// connecting leaves it clear, so the next one waits for the database first.
pub(super) fn take_database_found() -> bool {
    DATABASE_FOUND.get().swap(false, Ordering::AcqRel)
}

pub(super) fn set_database_found(found: bool) {
    DATABASE_FOUND.get().store(found, Ordering::Release);
}
