//! The worker's transactions: one whose ERROR becomes a WARNING and a retry rather than the end of
//! the worker, one that also holds the extension instance it is given (so a DROP EXTENSION waits
//! for it) and runs only while no restore is loading (restore.rs), subtransactions for the parts
//! of a round (isolation.rs), and WARNINGs that are logged only if what they tell of commits.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use super::isolation::Fault;
use super::latch::IN_TRANSACTION;
use crate::restore;

thread_local! {
    /// WARNINGs about what the current transaction did, logged once it commits: a subtransaction
    /// rolled back takes its own with it, so the log never tells of what did not happen.
    static AT_COMMIT: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Logs `message` as a WARNING when the current transaction commits, unless the subtransaction it
/// was written in is rolled back first.
pub(super) fn warn_at_commit(message: String) {
    AT_COMMIT.with(|m| m.borrow_mut().push(message));
}

/// The error report of whatever a guarded call caught: an ERROR or a panic.
fn report_of(error: &CaughtError) -> &pgrx::pg_sys::panic::ErrorReportWithLevel {
    match error {
        CaughtError::PostgresError(report)
        | CaughtError::ErrorReport(report)
        | CaughtError::RustPanic { ereport: report, .. } => report,
    }
}

/// Runs `f` in a transaction of its own. An ERROR (a lock wait past lock_timeout, say) rolls the
/// transaction back and is logged as a WARNING instead of ending the worker: the caller gets None
/// and tries again later.
fn guarded_transaction<R>(f: impl FnOnce() -> R) -> Option<R> {
    AT_COMMIT.with(|m| m.borrow_mut().clear());
    IN_TRANSACTION.store(true, Ordering::SeqCst);
    let f = AssertUnwindSafe(f);
    let result = PgTryBuilder::new(|| Some(BackgroundWorker::transaction(f)))
        .catch_others(|error| {
            unsafe { pg_sys::AbortCurrentTransaction() };
            warning!("billhook delivery worker: {}; trying again", report_of(&error).message());
            None
        })
        .execute();
    IN_TRANSACTION.store(false, Ordering::SeqCst);
    // A background worker's table statistics reach the shared ones only when it reports them:
    // unreported, autovacuum would not count the rows its fan-out writes and the dead rows its
    // updates leave (nor pg_stat_user_tables show them) until it exits. Not forced, PostgreSQL
    // reports them at most once a second; a long sleep reports the rest (latch::wait). Only ever
    // outside a transaction, as PostgreSQL requires.
    if !unsafe { pg_sys::IsTransactionState() } {
        unsafe { pg_sys::pgstat_report_stat(false) };
    }
    let warnings = AT_COMMIT.with(|m| std::mem::take(&mut *m.borrow_mut()));
    if result.is_some() {
        warnings.into_iter().for_each(|message| warning!("{message}"));
    }
    result
}

/// Runs `f` in a subtransaction of the current transaction: an ERROR or a panic in it rolls back
/// only what `f` did and comes back as a Fault, for the round to go on without it (isolation.rs).
/// Call with an SPI connection open, as PL/pgSQL's exception blocks do; SPI cleans up what the
/// subtransaction left at its abort.
pub(super) fn subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, Fault> {
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    let warned_before = AT_COMMIT.with(|m| m.borrow().len());
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
    }
    let f = AssertUnwindSafe(f);
    let result = PgTryBuilder::new(|| Ok(f()))
        .catch_others(|error| {
            let report = report_of(&error);
            Err(Fault::new(report.sql_error_code(), report.message()))
        })
        .execute();
    unsafe {
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            AT_COMMIT.with(|m| m.borrow_mut().truncate(warned_before));
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}

/// How a transaction of the worker on the extension's tables ended.
pub(super) enum Ended<R> {
    Committed(R),
    /// The extension is no longer the one the worker knew (dropped, or dropped and created again).
    ExtensionChanged,
    /// A restore into the database is loading (restore.rs): nothing was done.
    HeldBack,
    /// An error rolled it back (logged as a WARNING).
    Failed,
}

/// How often the worker says again that a restore holds it back: the session may be one an
/// operator forgot (a psql left open after loading rows in a replica session).
const HELD_BACK_SAID_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Since when a restore has held the worker back, and when it last said so; None while none does.
    static HELD_BACK: Cell<Option<(Instant, Instant)>> = const { Cell::new(None) };
}

/// Runs `f` in a guarded transaction holding a lock on the extension instance `extension` (its
/// OID), so a concurrent DROP EXTENSION waits for it at its first step instead of deadlocking with
/// it over the tables, and the workers' side of the restore lock, without which `f` does not run.
pub(super) fn extension_transaction<R>(extension: pg_sys::Oid, f: impl FnOnce() -> R) -> Ended<R> {
    let ended = guarded_transaction(|| {
        unsafe {
            pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, extension, 0, pg_sys::AccessShareLock as i32);
        }
        if installed_extension() != extension {
            return Ended::ExtensionChanged;
        }
        let may_run = restore::workers_may_run();
        say_whether_held_back(may_run);
        if may_run {
            Ended::Committed(f())
        } else {
            Ended::HeldBack
        }
    });
    ended.unwrap_or(Ended::Failed)
}

/// Logs when a restore starts and stops holding the worker back, and a WARNING every
/// HELD_BACK_SAID_EVERY while it does.
fn say_whether_held_back(may_run: bool) {
    let now = Instant::now();
    match (HELD_BACK.get(), may_run) {
        (None, true) => {}
        (Some(_), true) => {
            HELD_BACK.set(None);
            log!("billhook delivery worker goes on: no restore into this database is loading any more");
        }
        (None, false) => {
            HELD_BACK.set(Some((now, now)));
            log!(
                "billhook delivery worker holds back while a restore into this database is loading: it goes on \
                 when every session that wrote billhook's tables with session_replication_role = replica has \
                 ended (PID {})",
                restore::restoring_sessions()
            );
        }
        (Some((since, said)), false) if now.duration_since(said) >= HELD_BACK_SAID_EVERY => {
            HELD_BACK.set(Some((since, now)));
            warning!(
                "billhook delivery worker has held back for {} s: a session that wrote billhook's tables with \
                 session_replication_role = replica has not ended (PID {})",
                now.duration_since(since).as_secs(),
                restore::restoring_sessions()
            );
        }
        (Some(_), false) => {}
    }
}

/// The OID of billhook's extension in this database, InvalidOid if none; inside a transaction.
fn installed_extension() -> pg_sys::Oid {
    unsafe { pg_sys::get_extension_oid(c"billhook".as_ptr(), true) }
}
