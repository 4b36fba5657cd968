//! Statements planned once per backend and kept: billhook's hot statements (the outbox writes at
//! every commit, the worker's claims and outcome writes every round) would otherwise spend as long
//! being parsed and planned as being run. Kept plans are revalidated by Postgres when what they use
//! changes, down to a dropped and recreated extension.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::{self, OwnedPreparedStatement};
use pgrx::PgOid;

thread_local! {
    static KEPT: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Runs `run` with the kept plan of `sql` (a data-changing statement taking `argument_types`),
/// preparing it on first use. Call inside an SPI connection.
pub fn with_kept_plan<R>(
    sql: &str,
    argument_types: &[PgOid],
    run: impl FnOnce(&OwnedPreparedStatement) -> spi::Result<R>,
) -> spi::Result<R> {
    // Taken out while it runs, so that a nested use of the same statement prepares its own.
    let (sql, plan) = match KEPT.with(|kept| kept.borrow_mut().remove_entry(sql)) {
        Some(entry) => entry,
        None => {
            let plan = Spi::connect(|client| client.prepare_mut(sql, argument_types).map(|p| p.keep()))?;
            (sql.to_string(), plan)
        }
    };
    let result = run(&plan);
    KEPT.with(|kept| kept.borrow_mut().insert(sql, plan));
    result
}

thread_local! {
    static KEPT_AT_FLOOR: RefCell<HashMap<&'static str, (i64, OwnedPreparedStatement)>> = RefCell::new(HashMap::new());
}

/// The placeholder in a statement of with_kept_plan_at_floor for the first event id it reads.
const FLOOR: &str = "{floor}";

/// As with_kept_plan, for a statement over the outbox's windows from the event id `floor` on. The
/// floor is written into the text at FLOOR as a constant, not passed as a parameter: a kept plan
/// is generic (plan_cache_mode, worker/startup.rs), and PostgreSQL 15 prunes a generic plan's
/// partitions by a parameter only as it starts to run, after locking every partition in the plan
/// and setting up an UPDATE's result relation and a FOR UPDATE row mark for each; by a constant it
/// prunes them as the plan is made. `floor` is an i64: the text gains digits and a sign, nothing a
/// caller or a row wrote. The plan of the latest floor is kept, one per statement, and made again
/// when the floor moves.
pub fn with_kept_plan_at_floor<R>(
    sql: &'static str,
    floor: i64,
    argument_types: &[PgOid],
    run: impl FnOnce(&OwnedPreparedStatement) -> spi::Result<R>,
) -> spi::Result<R> {
    let plan = match KEPT_AT_FLOOR.with(|kept| kept.borrow_mut().remove(sql)) {
        Some((kept_floor, plan)) if kept_floor == floor => plan,
        _ => {
            debug_assert!(sql.contains(FLOOR), "a statement kept at a floor reads from {FLOOR}");
            let text = sql.replace(FLOOR, &format!("'{floor}'::bigint"));
            Spi::connect(|client| client.prepare_mut(&text, argument_types).map(|p| p.keep()))?
        }
    };
    let result = run(&plan);
    KEPT_AT_FLOOR.with(|kept| kept.borrow_mut().insert(sql, (floor, plan)));
    result
}
