//! What a worker does besides its rounds: its session settings, the wait for its database, and
//! (the first database's first worker) the launching of the other workers.

use std::collections::HashSet;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::latch::{self, wait, Woken};
use super::round::Periodic;
use super::{database_of, shmem, Place};
use crate::gucs;

/// The longest the worker waits for a lock; a round that would wait longer is tried again.
const LOCK_TIMEOUT: &std::ffi::CStr = c"1s";

/// What the first database's worker does besides its deliveries: starting the workers of the
/// other databases, when it starts, after each reload and every poll interval (should one not
/// have started for want of max_worker_processes).
#[derive(Default)]
pub(super) struct Launcher {
    runs: Periodic,
    /// Places the server had no room for, warned about once.
    warned: HashSet<Place>,
}

impl Launcher {
    pub(super) fn launch_if_due(&mut self, reloaded: bool) {
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
/// scans only where no index serves, the planner cannot pick a sequential scan of the outbox on
/// tables filled faster than autovacuum analyses them. An index range over a whole window (the
/// claims' floor, `event_id >= floor`, is one) stays open to it: the kept plans of the statements
/// reading the windows are made again as the windows grow (plans.rs, with_kept_plan_at_floor).
/// Its hot statements are kept (plans.rs) with generic plans: planned once, not every round; and
/// never JIT-compiled, which Postgres does again at every execution: once a backlog's estimates pass
/// jit_above_cost, that took longer than running the claim.
/// Whatever the cluster's or the database's defaults, its transactions are read-write READ
/// COMMITTED (a serializable default would make its SKIP LOCKED claims fail), its triggers fire,
/// it resolves names in pg_catalog only, no statement is cut short, and no lock is waited for
/// longer than LOCK_TIMEOUT (a round that hits it is tried again; see transactions::extension_transaction).
pub(super) fn pin_session_settings() {
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

pub(super) fn database_exists(database: &str) -> bool {
    let name = std::ffi::CString::new(database).unwrap_or_default();
    BackgroundWorker::transaction(|| unsafe { pg_sys::get_database_oid(name.as_ptr(), true) } != pg_sys::InvalidOid)
}

pub(super) fn wait_for_database(place: Place, database: &str, mut launcher: Option<&mut Launcher>) {
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
