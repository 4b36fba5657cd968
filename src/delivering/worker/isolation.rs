//! How a round goes on past what it cannot process: each part of a round runs in a subtransaction
//! (transactions::subtransaction); a part that fails is run again on halves of its rows until the rows
//! that fail alone are found, and those are quarantined with the error as their reason, while the
//! rest go on in the same round. Pure: the splitting and the judgement of an error, no Postgres
//! calls.
//!
//! An error that says nothing about the rows (a lock not granted in time, a cancel, a deadlock,
//! memory or disk exhausted) is no row's fault: it is not split on but ends the round, which is
//! tried again later as a whole. Nor is one that several rows fail alone with while no other row of
//! the part went through (`blamed`): those rows are held apart and tried again after a pause
//! (`Stalled`).

use std::time::{Duration, Instant};

use pgrx::PgSqlErrorCode;

/// An ERROR (or a panic) a part of a round raised, caught at its subtransaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fault {
    pub message: String,
    /// Whether it says something about the rows processed, or only about the moment.
    pub transient: bool,
}

impl Fault {
    pub fn new(code: PgSqlErrorCode, message: &str) -> Fault {
        Fault { message: message.to_string(), transient: is_transient(code) }
    }
}

/// SQLSTATE classes of errors that come from the moment, not from the data: 08 connection, 40
/// transaction rollback (deadlock, serialization), 53 insufficient resources, 57 operator
/// intervention (cancel, shutdown), 58 system errors. `billhook.transient` (sql/delivery.sql) says
/// the same in SQL; a test checks the two agree.
const TRANSIENT_CLASSES: [&str; 5] = ["08", "40", "53", "57", "58"];
/// And these codes: a lock or an object another session holds.
const TRANSIENT_CODES: [&str; 2] = ["55P03", "55006"];

fn is_transient(code: PgSqlErrorCode) -> bool {
    let sqlstate = sqlstate(code);
    TRANSIENT_CLASSES.contains(&&sqlstate[..2]) || TRANSIENT_CODES.contains(&sqlstate.as_str())
}

/// The five characters of an error code, which Postgres packs six bits each (MAKE_SQLSTATE).
fn sqlstate(code: PgSqlErrorCode) -> String {
    (0..5).map(|i| char::from(b'0' + ((code as i32 >> (6 * i)) & 0x3F) as u8)).collect()
}

/// The rows of a group that failed with `fault`, taken apart: `attempt` runs on halves, and on
/// halves of the halves that fail, until each failing row stands alone. Returns what the groups
/// that succeeded returned, and each row that failed alone with its fault. The halves are tried in
/// order, so rows keep their order among the results.
pub(super) fn split_until_alone<T: Clone, R>(
    group: &[T],
    fault: Fault,
    attempt: &mut impl FnMut(&[T]) -> Result<R, Fault>,
) -> (Vec<R>, Vec<(T, Fault)>) {
    let mut done = Vec::new();
    let mut culprits = Vec::new();
    split(group, fault, attempt, &mut done, &mut culprits);
    (done, culprits)
}

fn split<T: Clone, R>(
    group: &[T],
    fault: Fault,
    attempt: &mut impl FnMut(&[T]) -> Result<R, Fault>,
    done: &mut Vec<R>,
    culprits: &mut Vec<(T, Fault)>,
) {
    match group {
        [] => {}
        [alone] => culprits.push((alone.clone(), fault)),
        _ => {
            let (left, right) = group.split_at(group.len() / 2);
            for half in [left, right] {
                match attempt(half) {
                    Ok(result) => done.push(result),
                    Err(fault) => split(half, fault, attempt, done, culprits),
                }
            }
        }
    }
}

/// Several rows that failed alone, none to blame: how many, and the first one's fault.
#[derive(Debug, PartialEq)]
pub(super) struct NoneToBlame {
    pub rows: usize,
    pub fault: Fault,
}

/// The culprits to quarantine; NoneToBlame when several rows failed alone and no row of the part
/// went through (each other row's group succeeded without doing anything: a webhook with nothing to
/// claim, an outcome whose row another session held), for then the fault is the part's (a broken
/// function, a trigger that rejects every row), not theirs, and quarantining them would stop
/// everything the isolation protects. A lone row cannot be told apart from its part: it is blamed.
pub(super) fn blamed<T>(any_went_through: bool, culprits: Vec<(T, Fault)>) -> Result<Vec<(T, Fault)>, NoneToBlame> {
    match culprits.first() {
        Some((_, fault)) if culprits.len() > 1 && !any_went_through => {
            Err(NoneToBlame { rows: culprits.len(), fault: fault.clone() })
        }
        _ => Ok(culprits),
    }
}

/// The largest first part of `rows` rows (halving from the whole) that `attempt` processes, for a
/// part that takes its rows in an order it cannot be told to skip in (the fan-out takes events in
/// commit order). Err with the fault of the first row alone when even it fails: that row is the
/// culprit.
pub(super) fn largest_first_part<R>(
    rows: i32,
    fault: Fault,
    attempt: &mut impl FnMut(i32) -> Result<R, Fault>,
) -> Result<R, Fault> {
    let mut fault = fault;
    let mut rows = rows;
    while rows > 1 {
        rows /= 2;
        match attempt(rows) {
            Ok(result) => return Ok(result),
            Err(failed) => fault = failed,
        }
    }
    Err(fault)
}

/// Rows of a part none of which could be processed, for a fault that is no row's (`blamed` found
/// no culprit: a broken function, a trigger that rejects every row), held apart from the rows that
/// come after them. After a pause a few are tried again, a probe; the rest follow once a round with
/// the probe was not stalled. A lasting fault so costs one small failed attempt per pause instead of
/// every round's budget, which the fan-out and the claim need.
#[derive(Debug)]
pub(super) struct Stalled<T> {
    rows: Vec<T>,
    retry_at: Option<Instant>,
    probing: bool,
}

/// Rows a probe of stalled rows takes: few, for each may fail alone (a subtransaction or two each).
pub(super) const STALLED_PROBE: usize = 10;

impl<T> Default for Stalled<T> {
    fn default() -> Self {
        Stalled { rows: Vec::new(), retry_at: None, probing: false }
    }
}

impl<T> Stalled<T> {
    /// Holds `rows` apart, in their order: ahead of those held already when they bring the probe
    /// back (its rows are the oldest), after them otherwise. A pause that runs goes on; otherwise
    /// one starts.
    pub fn set_aside(&mut self, rows: Vec<T>, now: Instant, pause: Duration) {
        if std::mem::take(&mut self.probing) {
            self.rows.splice(0..0, rows);
        } else {
            self.rows.extend(rows);
        }
        if self.retry_at.is_none() {
            self.retry_at = Some(now + pause);
        }
    }

    /// The probe once the pause is over: the first `max` rows held (STALLED_PROBE); none before.
    pub fn take_due(&mut self, now: Instant, max: usize) -> Vec<T> {
        match self.retry_at {
            Some(at) if at <= now => {
                self.retry_at = None;
                self.probing = !self.rows.is_empty();
                self.rows.drain(..max.min(self.rows.len())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// After a round that was not stalled: when it carried the probe, the fault is gone and every
    /// row held is to be tried again.
    pub fn after_round_went_on(&mut self) -> Vec<T> {
        if !std::mem::take(&mut self.probing) {
            return Vec::new();
        }
        self.retry_at = None;
        std::mem::take(&mut self.rows)
    }

    /// How long until the probe is due, while rows are held.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.retry_at.filter(|_| !self.rows.is_empty()).map(|at| at.saturating_duration_since(now))
    }

    /// Every row held, at once (the worker stops: what can still be written is written).
    pub fn take_all(&mut self) -> Vec<T> {
        std::mem::take(self).rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(message: &str) -> Fault {
        Fault { message: message.to_string(), transient: false }
    }

    /// An attempt that fails on any group holding one of `bad`, naming the first.
    fn failing_on<'a>(
        bad: &'static [i32],
        tries: &'a mut Vec<Vec<i32>>,
    ) -> impl FnMut(&[i32]) -> Result<Vec<i32>, Fault> + 'a {
        move |group: &[i32]| {
            tries.push(group.to_vec());
            match group.iter().find(|row| bad.contains(row)) {
                Some(row) => Err(fault(&format!("row {row}"))),
                None => Ok(group.to_vec()),
            }
        }
    }

    #[test]
    fn every_failing_row_is_found_alone_and_every_other_row_is_processed_once() {
        let rows: Vec<i32> = (1..=10).collect();
        let mut tries = Vec::new();
        let (done, culprits) = split_until_alone(&rows, fault("all"), &mut failing_on(&[3, 8], &mut tries));
        let processed: Vec<i32> = done.into_iter().flatten().collect();
        assert_eq!(processed, vec![1, 2, 4, 5, 6, 7, 9, 10], "in their order");
        assert_eq!(culprits, vec![(3, fault("row 3")), (8, fault("row 8"))]);
        assert!(tries.len() <= 2 * 2 * 4, "a few tries per culprit, not one per row: {tries:?}");
    }

    #[test]
    fn a_lone_row_that_failed_is_the_culprit_without_another_try() {
        let mut tries = Vec::new();
        let (done, culprits) = split_until_alone(&[5], fault("five"), &mut failing_on(&[5], &mut tries));
        assert!(done.is_empty() && tries.is_empty());
        assert_eq!(culprits, vec![(5, fault("five"))]);
        let (done, culprits) = split_until_alone(&[] as &[i32], fault("none"), &mut failing_on(&[], &mut tries));
        assert!(done.is_empty() && culprits.is_empty(), "nothing to blame");
    }

    #[test]
    fn a_fault_that_follows_no_row_finds_every_row_failing_alone() {
        let rows = [1, 2, 3];
        let (done, culprits) = split_until_alone(&rows, fault("all"), &mut |_: &[i32]| Err::<(), _>(fault("always")));
        assert!(done.is_empty());
        assert_eq!(culprits.len(), 3);
    }

    /// An attempt that processes fewer than `limit` rows, noting each number of rows asked for.
    fn passing_below(limit: i32, asked: &mut Vec<i32>) -> impl FnMut(i32) -> Result<i32, Fault> + '_ {
        move |rows| {
            asked.push(rows);
            if rows < limit {
                Ok(rows)
            } else {
                Err(fault(&rows.to_string()))
            }
        }
    }

    #[test]
    fn the_largest_first_part_halves_until_it_passes_or_the_first_row_alone_fails() {
        let mut asked = Vec::new();
        assert_eq!(largest_first_part(1000, fault("1000"), &mut passing_below(300, &mut asked)), Ok(250));
        assert_eq!(asked, vec![500, 250]);
        asked.clear();
        assert_eq!(largest_first_part(1000, fault("1000"), &mut passing_below(1, &mut asked)), Err(fault("1")));
        assert_eq!(asked.last(), Some(&1), "down to the first row alone");
        asked.clear();
        assert_eq!(largest_first_part(1, fault("first"), &mut passing_below(1, &mut asked)), Err(fault("first")));
        assert!(asked.is_empty(), "one row that failed is the culprit");
    }

    #[test]
    fn when_several_rows_fail_alone_and_none_went_through_no_row_is_blamed() {
        let culprits = |n: i32| (1..=n).map(|row| (row, fault("f"))).collect::<Vec<_>>();
        assert_eq!(blamed(false, culprits(3)), Err(NoneToBlame { rows: 3, fault: fault("f") }), "the part's fault");
        assert_eq!(blamed(true, culprits(2)).map(|c| c.len()), Ok(2), "others went through: these are the culprits");
        assert_eq!(blamed(false, culprits(1)).map(|c| c.len()), Ok(1), "a lone row cannot be told apart from its part");
    }

    #[test]
    fn error_codes_read_as_their_sqlstate() {
        use PgSqlErrorCode::*;
        assert_eq!(sqlstate(ERRCODE_LOCK_NOT_AVAILABLE), "55P03");
        assert_eq!(sqlstate(ERRCODE_T_R_DEADLOCK_DETECTED), "40P01");
        assert_eq!(sqlstate(ERRCODE_DIVISION_BY_ZERO), "22012");
    }

    #[test]
    fn billhook_transient_in_sql_names_the_same_classes_and_codes() {
        let sql = include_str!("../../../sql/delivery.sql");
        let definition = sql
            .split("CREATE FUNCTION billhook.transient(sqlstate text)")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("sql/delivery.sql defines billhook.transient");
        let quoted = |items: &[&str]| items.iter().map(|item| format!("'{item}'")).collect::<Vec<_>>().join(", ");
        let expected = format!(
            "RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN left(sqlstate, 2) IN ({}) OR sqlstate IN ({})",
            quoted(&TRANSIENT_CLASSES),
            quoted(&TRANSIENT_CODES)
        );
        assert_eq!(definition.split_whitespace().collect::<Vec<_>>().join(" "), expected);
    }

    #[test]
    fn errors_of_the_moment_are_transient_and_errors_of_the_data_are_not() {
        use PgSqlErrorCode::*;
        for code in [
            ERRCODE_LOCK_NOT_AVAILABLE,
            ERRCODE_T_R_DEADLOCK_DETECTED,
            ERRCODE_T_R_SERIALIZATION_FAILURE,
            ERRCODE_QUERY_CANCELED,
            ERRCODE_ADMIN_SHUTDOWN,
            ERRCODE_OUT_OF_MEMORY,
            ERRCODE_DISK_FULL,
            ERRCODE_IO_ERROR,
        ] {
            assert!(Fault::new(code, "").transient, "{code:?}");
        }
        for code in [
            ERRCODE_DATETIME_FIELD_OVERFLOW,
            ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            ERRCODE_DIVISION_BY_ZERO,
            ERRCODE_INTERNAL_ERROR,
            ERRCODE_INVALID_TEXT_REPRESENTATION,
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            ERRCODE_STATEMENT_TOO_COMPLEX,
        ] {
            assert!(!Fault::new(code, "").transient, "{code:?}");
        }
    }
    #[test]
    fn stalled_rows_wait_their_pause_then_go_back_a_probe_first_and_the_rest_once_it_passed() {
        let start = Instant::now();
        let pause = Duration::from_secs(1);
        let mut stalled = Stalled::default();
        assert_eq!(stalled.due_in(start), None, "nothing held, no wake-up");
        stalled.set_aside(vec![1, 2, 3, 4, 5], start, pause);
        assert_eq!(stalled.due_in(start), Some(pause));
        assert!(stalled.take_due(start + pause / 2, 2).is_empty(), "not before the pause is over");
        stalled.set_aside(vec![6], start + pause / 2, pause);
        assert_eq!(stalled.due_in(start + pause / 2), Some(pause / 2), "a new stall does not push the pause back");
        assert_eq!(stalled.take_due(start + pause, 2), vec![1, 2], "the probe: a few, oldest first");
        assert_eq!(stalled.due_in(start + pause), None, "no wake-up while the probe is out");
        // The probe stalls again, with a newer row of its round: back in front, a new pause.
        stalled.set_aside(vec![1, 2, 7], start + pause, pause);
        assert_eq!(stalled.due_in(start + pause), Some(pause));
        assert!(stalled.after_round_went_on().is_empty(), "a round without the probe says nothing");
        assert_eq!(stalled.take_due(start + pause * 2, 2), vec![1, 2]);
        assert_eq!(stalled.after_round_went_on(), vec![7, 3, 4, 5, 6], "the probe went on: the rest at once");
        assert_eq!(stalled.due_in(start + pause * 2), None);
        assert!(stalled.after_round_went_on().is_empty());
    }

    #[test]
    fn every_stalled_row_is_taken_when_the_worker_stops() {
        let now = Instant::now();
        let mut stalled = Stalled::default();
        stalled.set_aside(vec![1, 2], now, Duration::from_secs(1));
        assert_eq!(stalled.take_all(), vec![1, 2], "before the pause is over too");
        assert_eq!(stalled.due_in(now), None);
        assert!(stalled.take_due(now + Duration::from_secs(5), 10).is_empty());
    }
}
