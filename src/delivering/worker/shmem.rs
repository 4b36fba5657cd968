//! What the workers share with ordinary backends and with each other: their registration (the
//! first with the postmaster, the others by the first: `launch`), and a slot of shared-memory
//! atomics per worker through which committing backends wake their database's workers (`wake`),
//! learn which events are worth waking them for (`subscribed_events`) and tell them webhooks changed
//! (`webhooks_changed`). These are the only worker functions called outside the worker processes.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgAtomic};

use super::place::{Place, SLOTS};
use crate::catalog::EventSet;
use crate::gucs::MAX_WORKERS_PER_DATABASE;

/// One worker's part of shared memory, at its place's slot (`Place::slot`): slot 0 belongs to the
/// worker the postmaster starts, the others to the workers it starts in turn (see `launch`).
struct Slot {
    /// The process running as this slot's worker (0: none), taken when it starts, so that a second
    /// worker for the slot (registered twice around a crash) steps aside; its pid in worker_status.
    owner: AtomicI32,
    /// Set by whoever registered the slot's worker; cleared by the worker when its database is no
    /// longer configured and it ends for good.
    registered: AtomicBool,
    /// The worker's `PGPROC` number, for committing backends to set its latch; -1 when not running.
    procno: AtomicI32,
    /// The OID of the database the worker serves: commits elsewhere have nothing for it.
    database: AtomicU32,
    started_at: AtomicI64,
    /// Times the worker connected to its database since the server started.
    starts: AtomicU64,
    /// The events some enabled (or held) webhook of the worker's database subscribes to (`EventSet`
    /// bits), so commits of other events do not wake it; every event until the worker has looked.
    subscribed_events: AtomicU32,
    /// Whether the configured database existed when the worker last looked (see
    /// `billhook_worker_main`).
    database_found: AtomicBool,
    /// Wake-ups asked of the worker, counted before its latch is set: waits inside a round (for a
    /// lock, say) reset the latch, so the worker compares the count before and after each round.
    wake_ups: AtomicU64,
}

unsafe impl PGRXSharedMemory for Slot {}

impl Slot {
    fn new() -> Slot {
        Slot {
            owner: AtomicI32::new(0),
            registered: AtomicBool::new(false),
            procno: AtomicI32::new(-1),
            database: AtomicU32::new(0),
            started_at: AtomicI64::new(0),
            starts: AtomicU64::new(0),
            subscribed_events: AtomicU32::new(EventSet::ALL.bits()),
            database_found: AtomicBool::new(true),
            wake_ups: AtomicU64::new(0),
        }
    }

    fn serves(&self, database: pg_sys::Oid) -> bool {
        self.procno.load(Ordering::Acquire) >= 0 && self.database.load(Ordering::Acquire) == u32::from(database)
    }
}

static WORKER_SLOTS: PgAtomic<[Slot; SLOTS]> = unsafe { PgAtomic::new(c"billhook_worker_slots") };
/// Counts commits that changed which webhooks are enabled or what they subscribe to, in any
/// database: each worker looks at its subscriptions again.
static WEBHOOK_CHANGES: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"billhook_webhook_changes") };
/// Counts commits that called billhook.wake_worker_at_commit (a redelivery, a replay, a restore, a
/// webhook enabled, a fan-out into an older window), in any database: they may have queued
/// deliveries below where the claims start, which each worker then looks up again.
static REQUEUES: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"billhook_requeues") };

/// Set in `_PG_init` when loaded through shared_preload_libraries: only then do the workers and
/// their shared memory exist.
static PRELOADED: AtomicBool = AtomicBool::new(false);

const WORKER_TYPE: &str = "billhook delivery worker";

fn worker(slot: usize) -> BackgroundWorkerBuilder {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("billhook")
        .set_function("billhook_worker_main")
        .set_argument((slot as i32).into_datum())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
}

pub fn register_in_postmaster() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(WORKER_SLOTS = std::array::from_fn(|_| Slot::new()));
    pg_shmem_init!(WEBHOOK_CHANGES = AtomicU64::new(0));
    pg_shmem_init!(REQUEUES = AtomicU64::new(0));
    worker(0).load();
}

fn slots() -> &'static [Slot; SLOTS] {
    WORKER_SLOTS.get()
}

/// The slot of the current database's first worker (the one that fans events out), if one runs.
/// Every commit that recorded events asks: only the first workers' slots are read.
fn this_databases_slot() -> Option<&'static Slot> {
    let database = unsafe { pg_sys::MyDatabaseId };
    slots().iter().step_by(MAX_WORKERS_PER_DATABASE).find(|slot| slot.serves(database))
}

fn set_latch(slot: &Slot) {
    slot.wake_ups.fetch_add(1, Ordering::AcqRel);
    let procno = slot.procno.load(Ordering::Acquire);
    if procno >= 0 {
        unsafe {
            let proc = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}

pub fn is_preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Who a commit wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The commit recorded events a webhook subscribes to (the worker's own sweeps too): the
    /// database's first worker fans them out, then wakes the others.
    FanOut,
    /// The commit queued deliveries or changed webhooks: every worker of the database.
    Everyone,
}

/// Sets the latch of this database's workers, as `who` says. Called after a commit; costs a few
/// atomic reads.
pub fn wake(who: Wake) {
    if !is_preloaded() {
        return;
    }
    match who {
        Wake::FanOut => this_databases_slot().into_iter().for_each(set_latch),
        Wake::Everyone => {
            REQUEUES.get().fetch_add(1, Ordering::AcqRel);
            let database = unsafe { pg_sys::MyDatabaseId };
            slots().iter().filter(|slot| slot.serves(database)).for_each(set_latch);
        }
    }
}

/// Wake-ups asked of the worker in `slot` so far.
pub(super) fn wake_ups(slot: usize) -> u64 {
    slots()[slot].wake_ups.load(Ordering::Acquire)
}

/// Wakes the other workers of `place`'s database: deliveries it fanned out may be theirs.
pub(super) fn wake_siblings(place: Place) {
    place.siblings().map(|sibling| &slots()[sibling.slot()]).for_each(set_latch);
}

/// The events worth waking this database's worker for (all when it has not looked yet, or when
/// no worker serves the database: waking it is then a no-op anyway).
pub fn subscribed_events() -> EventSet {
    match is_preloaded().then(this_databases_slot).flatten() {
        Some(slot) => EventSet::from_bits(slot.subscribed_events.load(Ordering::Acquire)),
        None => EventSet::ALL,
    }
}

/// Called after a commit that changed webhooks, before `wake`: the worker looks at the
/// subscriptions again in its next round.
pub fn webhooks_changed() {
    if is_preloaded() {
        WEBHOOK_CHANGES.get().fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
pub struct WorkerStatus {
    pub pid: Option<i32>,
    pub started_at: Option<i64>,
    pub starts: u64,
}

/// The worker at `place`.
pub fn status_of(place: Place) -> WorkerStatus {
    let Some(slot) = slots_if_preloaded().and_then(|slots| slots.get(place.slot())) else {
        return WorkerStatus::default();
    };
    let pid = slot.owner.load(Ordering::Acquire);
    let alive = pid > 0 && slot.procno.load(Ordering::Acquire) >= 0 && is_alive(pid);
    WorkerStatus {
        pid: alive.then_some(pid),
        started_at: alive.then(|| slot.started_at.load(Ordering::Acquire)),
        starts: slot.starts.load(Ordering::Acquire),
    }
}

fn slots_if_preloaded() -> Option<&'static [Slot; SLOTS]> {
    is_preloaded().then(slots)
}

fn is_alive(pid: i32) -> bool {
    unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

/// Takes the slot for this process, unless another live worker has it.
pub(super) fn take_slot(index: usize) -> bool {
    let slot = &slots()[index];
    let me = unsafe { pg_sys::MyProcPid };
    let owner = slot.owner.load(Ordering::Acquire);
    if owner != 0 && owner != me && is_alive(owner) {
        return false;
    }
    slot.owner.compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Called by the worker once connected: backends of its database may wake it from now on, for
/// every event until it has published the subscriptions.
pub(super) fn announce_started(index: usize) {
    let slot = &slots()[index];
    slot.subscribed_events.store(EventSet::ALL.bits(), Ordering::Release);
    unsafe {
        slot.started_at.store(pg_sys::GetCurrentTimestamp(), Ordering::Release);
        slot.database.store(u32::from(pg_sys::MyDatabaseId), Ordering::Release);
        slot.procno.store((*pg_sys::MyProc).pgprocno, Ordering::Release);
    }
    slot.starts.fetch_add(1, Ordering::AcqRel);
}

pub(super) fn announce_stopped(index: usize) {
    slots()[index].procno.store(-1, Ordering::Release);
}

/// The worker ends for good: its database is no longer configured.
pub(super) fn release_slot(index: usize) {
    let slot = &slots()[index];
    slot.procno.store(-1, Ordering::Release);
    slot.registered.store(false, Ordering::Release);
    slot.owner.store(0, Ordering::Release);
}

pub(super) fn publish_subscribed_events(index: usize, events: EventSet) {
    slots()[index].subscribed_events.store(events.bits(), Ordering::Release);
}

/// How many commits have queued deliveries again so far (see `REQUEUES`).
pub(super) fn requeues() -> u64 {
    REQUEUES.get().load(Ordering::Acquire)
}

/// How many webhook changes have been committed so far (see `webhooks_changed`).
pub(super) fn webhook_changes() -> u64 {
    WEBHOOK_CHANGES.get().load(Ordering::Acquire)
}

/// Whether the previous start found the database, clearing the flag: a start that dies before
/// connecting leaves it clear, so the next one waits for the database first.
pub(super) fn take_database_found(index: usize) -> bool {
    slots()[index].database_found.swap(false, Ordering::AcqRel)
}

pub(super) fn set_database_found(index: usize, found: bool) {
    slots()[index].database_found.store(found, Ordering::Release);
}

/// Registers each configured worker but the first (the postmaster's) that has none; called by the
/// first worker. A registration the server refuses (no free max_worker_processes) is tried again
/// at the next call; returns the places refused.
pub(super) fn launch(databases: usize, workers: usize) -> Vec<Place> {
    let mut refused = Vec::new();
    for place in Place::all(databases, workers).skip(1) {
        let slot = &slots()[place.slot()];
        if slot.registered.load(Ordering::Acquire) {
            continue;
        }
        // The handle is not kept: the worker restarts itself and ends itself.
        match worker(place.slot()).load_dynamic() {
            Ok(_) => slot.registered.store(true, Ordering::Release),
            Err(_) => refused.push(place),
        }
    }
    refused
}
