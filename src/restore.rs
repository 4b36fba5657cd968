//! The lock by which a restore holds back the delivery workers of its database. pg_restore loads a
//! table's rows first and sets its id sequence afterwards, when all data is in: a delivery, attempt,
//! event or invoice a worker wrote in between would be given an id that a restored row already has
//! (a delivery made with `ON CONFLICT DO NOTHING` is then silently not made), or one the restore's
//! setval hands out again later. And a worker acting on half a restore sends what the rest of it
//! would have changed. So the first row a replica session (as docs/operations.md says to restore)
//! writes into any of billhook's tables makes it hold this lock until the session ends, and the
//! workers run no transaction in the database while any session holds it.
//!
//! One lock of the database, of the lock method that advisory locks use (whose session locks a
//! backend releases as it exits, and `pg_advisory_unlock_all()` too) but with a tag no SQL function
//! makes, so that no role can take it by calling `pg_advisory_lock`. Taken in two modes that
//! conflict with each other and not with themselves: SHARE by restoring sessions (several load at
//! once with `pg_restore -j`), ROW EXCLUSIVE by each worker transaction (several workers serve a
//! database). Neither side ever waits in the lock manager for the other: a worker transaction that
//! cannot take it does nothing and the worker tries again shortly; a restoring session tries again
//! every few milliseconds until the worker's transaction under way has ended. A restore queued
//! behind a worker transaction that waits for one of the restore's own table locks (a window's
//! partition it truncates, say) would otherwise be a deadlock, which PostgreSQL might resolve by
//! aborting the restore.

use std::time::Duration;

use pgrx::prelude::*;

use crate::error::BillhookError;

/// The lock's keys, as pg_locks shows them (locktype `userlock`, classid and objid; objsubid 0):
/// "bill" and "hook" in ASCII.
const LOCK_KEYS: (u32, u32) = (0x6269_6c6c, 0x686f_6f6b);

/// How long a restoring session waits between its tries for the lock.
const RESTORE_RETRIES_EVERY: Duration = Duration::from_millis(10);

fn lock_tag() -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: LOCK_KEYS.0,
        locktag_field3: LOCK_KEYS.1,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_USERLOCK as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Whether this session applies what another database wrote, in a replica session too: native
/// logical replication, or a tool that marks its changes with a replication origin. Its rows are no
/// restore, and it never ends.
fn applies_replication() -> bool {
    unsafe { pg_sys::IsLogicalWorker() || pg_sys::replorigin_session_origin != pg_sys::InvalidRepOriginId as u16 }
}

/// Whether this session writes as a restore does: in replica mode (sql/restore.sql enables the
/// trigger for such sessions alone, but `ALTER TABLE … ENABLE TRIGGER USER`, after a bulk load
/// say, enables it for every session; an application's session would then hold the workers back
/// until it ended), and not applying logical replication.
fn restoring() -> bool {
    let role = unsafe { pg_sys::SessionReplicationRole };
    role == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 && !applies_replication()
}

/// `BEFORE INSERT`, enabled only in replica sessions, on every table whose rows a dump of billhook
/// carries (sql/restore.sql): the session holds the workers back from its first row until it ends.
/// `FOR EACH STATEMENT` where it can be (a row trigger would cost COPY its batched inserts), `FOR
/// EACH ROW` on the partitioned tables, whose partitions a restore loads directly. Named to fire
/// before billhook's other restore triggers, which may skip the row.
#[pg_trigger]
fn hold_back_workers<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    let tag = lock_tag();
    if restoring() && !unsafe { pg_sys::LockHeldByMe(&tag, pg_sys::ShareLock as i32) } {
        while unsafe { pg_sys::LockAcquire(&tag, pg_sys::ShareLock as i32, true, true) }
            == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
        {
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    RESTORE_RETRIES_EVERY.as_millis() as std::ffi::c_long,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            check_for_interrupts!();
        }
    }
    Ok(trigger.new())
}

/// Takes the workers' side of the lock for the current transaction, unless a restore holds it:
/// whether the worker may go on with the transaction.
pub fn workers_may_run() -> bool {
    let tag = lock_tag();
    let taken = unsafe { pg_sys::LockAcquire(&tag, pg_sys::RowExclusiveLock as i32, false, true) };
    taken != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// The sessions holding the workers back (or about to), for the worker's log: PID, application
/// name and start of each. Only for a message: a failure to read them says "unknown".
pub fn restoring_sessions() -> String {
    Spi::get_one_with_args::<String>(
        "SELECT string_agg(format('%s (%s, since %s)', l.pid, coalesce(nullif(a.application_name, ''), 'no name'),
                                  a.backend_start), ', ' ORDER BY l.pid)
         FROM pg_catalog.pg_locks AS l LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
         WHERE l.locktype = 'userlock' AND l.mode <> 'RowExclusiveLock'
           AND (l.database, l.classid, l.objid, l.objsubid) = ($1, $2, $3, 0)",
        &[
            unsafe { pg_sys::MyDatabaseId }.into(),
            pg_sys::Oid::from(LOCK_KEYS.0).into(),
            pg_sys::Oid::from(LOCK_KEYS.1).into(),
        ],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| "unknown".into())
}
