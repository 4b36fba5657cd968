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
