//! The lock by which a restore holds back the delivery workers of its database. pg_restore loads a
//! table's rows first and sets its id sequence afterwards, when all data is in: a delivery, attempt,
//! event or health-log row a worker wrote in between would be given an id that a restored row
//! already has (a delivery made with `ON CONFLICT DO NOTHING` is then silently not made), or one
//! the restore's setval hands out again later. And a worker acting on half a restore sends what the
//! rest of it would have changed. So the first row a replica session (as docs/operations.md says to
//! restore) writes into any of billhook's tables makes it hold this lock until the session ends,
//! and the workers run no transaction in the database while any session holds it.
//!
//! One advisory lock of the database, taken in two modes that conflict with each other and not
//! with themselves: SHARE by restoring sessions (several load at once with `pg_restore -j`), ROW
//! EXCLUSIVE by each worker transaction (several workers serve a database). A worker never waits
//! for it: a transaction that cannot take it does nothing, and the worker tries again shortly.

use pgrx::prelude::*;

use crate::error::BillhookError;

/// The advisory lock's two keys, as pg_locks shows them (classid, objid, with objsubid 2): "bill"
/// and "hook" in ASCII.
pub const LOCK_KEYS: (u32, u32) = (0x6269_6c6c, 0x686f_6f6b);

fn lock_tag() -> pg_sys::LOCKTAG {
    // As SET_LOCKTAG_ADVISORY does for pg_advisory_lock(int4, int4): of the user lock method, whose
    // session locks a backend releases as it exits.
    pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: LOCK_KEYS.0,
        locktag_field3: LOCK_KEYS.1,
        locktag_field4: 2,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Whether this backend is a logical replication worker, which applies rows a publisher wrote in
/// a replica session too: its rows are no restore, and it never ends.
fn applies_logical_replication() -> bool {
    let entry = unsafe { pg_sys::MyBgworkerEntry };
    !entry.is_null()
        && unsafe { std::ffi::CStr::from_ptr((*entry).bgw_type.as_ptr()) }.to_bytes() == b"logical replication worker"
}

/// `BEFORE INSERT FOR EACH ROW`, enabled only in replica sessions, on every table whose rows a dump
/// of billhook carries (sql/restore.sql): the session holds the workers back from its first row
/// until it ends. Named to fire before billhook's other restore triggers, which may skip the row.
#[pg_trigger]
fn hold_back_workers<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, BillhookError> {
    let tag = lock_tag();
    if !unsafe { pg_sys::LockHeldByMe(&tag, pg_sys::ShareLock as i32) } && !applies_logical_replication() {
        // Waits for the workers' transactions under way, which take the lock before anything else.
        unsafe { pg_sys::LockAcquire(&tag, pg_sys::ShareLock as i32, true, false) };
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

/// The PIDs of the sessions holding the workers back, for the worker's log.
pub fn restoring_sessions() -> String {
    Spi::get_one_with_args::<String>(
        "SELECT string_agg(l.pid::text, ', ' ORDER BY l.pid) FROM pg_catalog.pg_locks AS l
         WHERE l.locktype = 'advisory' AND l.mode = 'ShareLock' AND l.granted
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database())
           AND (l.classid, l.objid, l.objsubid) = ($1, $2, 2)",
        &[pg_sys::Oid::from(LOCK_KEYS.0).into(), pg_sys::Oid::from(LOCK_KEYS.1).into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| "unknown".into())
}
