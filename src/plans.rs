//! Statements planned once per backend and kept: billhook's hot statements (the outbox writes at
//! every commit, the worker's claims and outcome writes every round) would otherwise spend as long
//! being parsed and planned as being run. Kept plans are revalidated by Postgres when what they use
//! changes, down to a dropped and recreated extension.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    static KEPT_AT_FLOOR: RefCell<HashMap<&'static str, (PlannedFor, OwnedPreparedStatement)>> =
        RefCell::new(HashMap::new());
}

/// The placeholder in a statement of with_kept_plan_at_floor for the first event id it reads.
const FLOOR: &str = "{floor}";

/// What a plan kept at a floor was made for: the floor, and the size class (size_class) of the
/// events' and of the deliveries' partition of each window it reads.
#[derive(PartialEq, Eq)]
struct PlannedFor {
    floor: i64,
    sizes: Vec<u32>,
}

/// Pages a window's events' or deliveries' partition may hold before its growth makes the plans
/// reading it be made again (a power of two: size_class counts from it).
const PAGES_NEVER_REPLANNED_FOR: i64 = 128;
const _: () = assert!((PAGES_NEVER_REPLANNED_FOR as u64).is_power_of_two());

/// The class of a partition that takes `bytes`: 0 below PAGES_NEVER_REPLANNED_FOR pages, then one
/// more each time it has grown fourfold. The planner estimates a table's rows from its size as the
/// plan is made, so a plan is made again when a partition it reads has changed class since;
/// fourfold, not twofold, because a claim over many windows takes long to plan.
fn size_class(bytes: i64) -> u32 {
    let pages = bytes / i64::from(pg_sys::BLCKSZ);
    if pages < PAGES_NEVER_REPLANNED_FOR {
        0
    } else {
        (pages.ilog2() - PAGES_NEVER_REPLANNED_FOR.ilog2()) / 2 + 1
    }
}

/// How long a measurement of the windows serves: the growth it misses is what the outbox takes in
/// meanwhile, which a plan made on a window analyzed while empty reads at every run until then.
const SIZES_MEASURED_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    /// The latest window_sizes: of which floor, when, and what.
    static MEASURED: RefCell<Option<(i64, Instant, Vec<u32>)>> = const { RefCell::new(None) };
}

/// The size classes of the events' and the deliveries' partitions of the windows from the one
/// holding the event id `floor` on (window_sizes.sql), measured at
/// most every SIZES_MEASURED_EVERY: at a commit a round, a look at the catalog and the partitions'
/// files every round would cost more than the claim.
fn window_sizes(floor: i64) -> spi::Result<Vec<u32>> {
    use pg_sys::BuiltinOid::INT4OID;
    if let Some(sizes) = MEASURED.with(|measured| match &*measured.borrow() {
        Some((of, at, sizes)) if *of == floor && at.elapsed() < SIZES_MEASURED_EVERY => Some(sizes.clone()),
        _ => None,
    }) {
        return Ok(sizes);
    }
    let first_window = i32::try_from(floor >> 40).unwrap_or(0).max(0);
    let bytes = with_kept_plan(include_str!("window_sizes.sql"), &[INT4OID.oid()], |plan| {
        Spi::connect(|client| client.select(plan, None, &[first_window.into()])?.first().get_one::<Vec<i64>>())
    })?;
    let sizes: Vec<u32> = bytes.unwrap_or_default().into_iter().map(size_class).collect();
    MEASURED.with(|measured| *measured.borrow_mut() = Some((floor, Instant::now(), sizes.clone())));
    Ok(sizes)
}

/// As with_kept_plan, for a statement over the outbox's windows from the event id `floor` on. The
/// floor is written into the text at FLOOR as a constant, not passed as a parameter: a kept plan
/// is generic (plan_cache_mode, worker/startup.rs), and PostgreSQL 15 prunes a generic plan's
/// partitions by a parameter only as it starts to run, after locking every partition in the plan
/// and setting up an UPDATE's result relation and a FOR UPDATE row mark for each; by a constant it
/// prunes them as the plan is made. `floor` is an i64: the text gains digits and a sign, nothing a
/// caller or a row wrote. The plan of the latest floor is kept, one per statement, and made again
/// when the floor moves or a partition it reads has changed size class: PostgreSQL makes a plan again
/// when a partition is next analyzed, and until then a plan made on a partition analyzed while
/// empty, on estimates of a row or none, reads all of it where it looks up a batch's rows.
pub fn with_kept_plan_at_floor<R>(
    sql: &'static str,
    floor: i64,
    argument_types: &[PgOid],
    run: impl FnOnce(&OwnedPreparedStatement) -> spi::Result<R>,
) -> spi::Result<R> {
    let planned_for = PlannedFor { floor, sizes: window_sizes(floor)? };
    let plan = match KEPT_AT_FLOOR.with(|kept| kept.borrow_mut().remove(sql)) {
        Some((kept_for, plan)) if kept_for == planned_for => plan,
        _ => {
            debug_assert!(sql.contains(FLOOR), "a statement kept at a floor reads from {FLOOR}");
            let text = sql.replace(FLOOR, &format!("'{floor}'::bigint"));
            Spi::connect(|client| client.prepare_mut(&text, argument_types).map(|p| p.keep()))?
        }
    };
    let result = run(&plan);
    KEPT_AT_FLOOR.with(|kept| kept.borrow_mut().insert(sql, (planned_for, plan)));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: i64 = pg_sys::BLCKSZ as i64;

    #[test]
    fn a_size_class_grows_at_each_fourfold_past_the_pages_never_replanned_for() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(128 * PAGE - 1), 0);
        assert_eq!(size_class(128 * PAGE), 1);
        assert_eq!(size_class(511 * PAGE), 1);
        assert_eq!(size_class(512 * PAGE), 2);
        assert_eq!(size_class(2048 * PAGE), 3);
        assert_eq!(size_class(1 << 40), 11);
        assert_eq!(size_class(i64::MAX), 22);
        assert_eq!(size_class(-1), 0);
    }

    #[test]
    fn a_size_class_never_falls_as_a_partition_grows() {
        let mut last = 0;
        for pages in 0..100_000 {
            let class = size_class(pages * PAGE);
            assert!(class == last || class == last + 1, "{pages} pages: {class} after {last}");
            last = class;
        }
    }
}
