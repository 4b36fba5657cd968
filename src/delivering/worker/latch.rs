//! How the worker waits and is signalled: its latch and SIGTERM handling, and the wait for
//! commits, outcomes or a timeout. Its transactions are transactions.rs's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

/// Set while the worker runs a transaction: SIGTERM then interrupts the statement (a lock wait
/// among others) the way it does for any backend; between transactions the loop notices the
/// request and stops after recording the outcomes it has.
pub(super) static IN_TRANSACTION: AtomicBool = AtomicBool::new(false);

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

/// How long statistics held back (transactions::guarded_transaction) may wait for a sleep to end.
const STATISTICS_HELD_AT_MOST: Duration = Duration::from_secs(1);

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
    // Statistics the transactions held back are reported once the worker has slept a second, not
    // at every short wait between rounds.
    let held_back = unsafe { pg_sys::pgstat_report_stat(false) } != 0;
    if held_back && timeout > STATISTICS_HELD_AT_MOST {
        let happened = sleep(socket, STATISTICS_HELD_AT_MOST);
        if happened & pg_sys::WL_TIMEOUT == 0 || shutdown_requested() {
            return woken_by(happened);
        }
        unsafe { pg_sys::pgstat_report_stat(true) };
        return woken_by(sleep(socket, timeout - STATISTICS_HELD_AT_MOST));
    }
    woken_by(sleep(socket, timeout))
}

/// Waits on the latch, `socket` and `timeout`; returns what happened (WL_* flags).
fn sleep(socket: Option<std::os::fd::RawFd>, timeout: Duration) -> u32 {
    let mut events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
    if socket.is_some() {
        events |= pg_sys::WL_SOCKET_READABLE;
    }
    unsafe {
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
    }
}

fn woken_by(happened: u32) -> Woken {
    if shutdown_requested() {
        Woken::ShutDown
    } else if happened & (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT) != 0 {
        Woken::CommitOrTimeout
    } else {
        Woken::Outcomes
    }
}
