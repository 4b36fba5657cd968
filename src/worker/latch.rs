//! How the worker waits, is signalled and runs transactions: its latch and SIGTERM handling, the
//! wait for commits, outcomes or a timeout, and transactions whose ERROR is a WARNING and a retry
//! rather than the end of the worker.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use super::isolation::Fault;

/// Set while the worker runs a transaction: SIGTERM then interrupts the statement (a lock wait
/// among others) the way it does for any backend; between transactions the loop notices the
/// request and stops after recording the outcomes it has.
static IN_TRANSACTION: AtomicBool = AtomicBool::new(false);

pub(super) fn install_signal_handlers() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // Postgres's flag for SIGHUP, which `wait` can read without clearing it.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(on_sighup));
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(on_sigterm));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_sighup(_signal: i32) {
    let saved_errno = *libc::__errno_location();
    (&raw mut pg_sys::ConfigReloadPending).write_volatile(1);
    pg_sys::SetLatch(pg_sys::MyLatch);
    *libc::__errno_location() = saved_errno;
}

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

pub(super) fn shutdown_requested() -> bool {
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Applies a pending SIGHUP; true if there was one (the caller then reads its settings again).
pub(super) fn reload_settings_if_asked() -> bool {
    if !reload_pending() {
        return false;
    }
    unsafe {
        (&raw mut pg_sys::ConfigReloadPending).write_volatile(0);
        pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
    }
    true
}

fn reload_pending() -> bool {
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0 }
}

/// Why `wait` returned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Woken {
    ShutDown,
    /// The latch (a commit, a signal) or the timeout: there may be new events to fan out.
    CommitOrTimeout,
    /// Only the senders' socket: outcomes to record.
    Outcomes,
}

/// Sleeps until the latch is set (a commit, a signal), `socket` is readable, or `timeout` passes
/// (rounded up to whole milliseconds).
pub(super) fn wait(socket: Option<std::os::fd::RawFd>, timeout: Duration) -> Woken {
    // A signal that came during the last round is pending even if a wait inside the round reset
    // the latch: no sleep then.
    if shutdown_requested() {
        return Woken::ShutDown;
    }
    if reload_pending() {
        return Woken::CommitOrTimeout;
    }
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
        // Only a latch that was reported is reset: the wait returns one event, so a commit's latch
        // set while the senders' socket was reported stays set for the next wait to see.
        if happened as u32 & pg_sys::WL_LATCH_SET != 0 {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
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
    /// An error rolled it back (logged as a WARNING).
    Failed,
}

/// Runs `f` in a guarded transaction holding a share lock on the extension `generation`, so a
/// concurrent DROP EXTENSION waits for it at its first step instead of deadlocking with it over the
/// tables.
pub(super) fn extension_transaction<R>(generation: pg_sys::Oid, f: impl FnOnce() -> R) -> Ended<R> {
    let ended = guarded_transaction(|| {
        unsafe {
            pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, generation, 0, pg_sys::AccessShareLock as i32);
        }
        (installed_extension() == generation).then(f)
    });
    match ended {
        Some(Some(result)) => Ended::Committed(result),
        Some(None) => Ended::ExtensionChanged,
        None => Ended::Failed,
    }
}

/// The OID of billhook's extension in this database, InvalidOid if none; inside a transaction.
pub(super) fn installed_extension() -> pg_sys::Oid {
    unsafe { pg_sys::get_extension_oid(c"billhook".as_ptr(), true) }
}
