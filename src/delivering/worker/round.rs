//! The rhythm of the worker's loop: when a round goes to the database, what a round found, and the
//! jobs it runs every so often. Pure: no Postgres calls, so plain unit tests cover it.

use std::time::{Duration, Instant};

/// While pushes are in flight, outcomes are written at most this often, in one transaction.
pub(super) const ROUND_INTERVAL: Duration = Duration::from_millis(2);

/// A round that has spent this long leaves its later parts (the fan-out, then the claim) to the
/// next round, which follows at once: the outcomes, fan-out and claims of many webhooks do not add
/// up in one round, however slow the machine. The next round has only the outcomes that arrived
/// meanwhile to write, so a put-off claim follows soon.
pub(super) const ROUND_BUDGET: Duration = Duration::from_millis(20);

/// How long each part of a round (writing outcomes, the fan-out, the claim) should take: each takes
/// as many rows as its cost per row in recent rounds fits in this, so that on a slow or busy
/// machine the parts shrink rather than the round growing (see PartCost).
pub(super) const PART_BUDGET: Duration = Duration::from_millis(15);

/// Events one round's fan-out takes at most, with one webhook.
pub(super) const FAN_OUT_EVENTS: i32 = 1000;
/// Deliveries one round's fan-out makes at most, roughly: with more webhooks it takes fewer
/// events (every webhook that could get deliveries counts, whatever it subscribes to), so that a
/// round stays short however many webhooks an event goes to. An event goes out whole, so with
/// more webhooks than this a round makes one event's deliveries.
pub(super) const FAN_OUT_DELIVERIES: usize = 1000;

/// Events one round's fan-out takes when `webhooks` webhooks could get deliveries and the round
/// may make `deliveries`.
pub(super) fn fan_out_events(webhooks: i64, deliveries: usize) -> i32 {
    (deliveries as i64 / webhooks.max(1)).clamp(1, i64::from(FAN_OUT_EVENTS)) as i32
}

/// The fewest rows a part takes, however slow it was: every round gets on.
const PART_FLOOR: usize = 10;
/// Runs of fewer rows say more about a part's fixed cost than about its cost per row: they may only
/// lower the estimate (their cost per row is at most what they show), never raise it, so that a
/// part shrunk to its floor by a slow run grows back.
const ROWS_OBSERVED: usize = 20;

/// What one part of a round costs per row, a moving average over its recent runs.
#[derive(Default, Debug)]
pub(super) struct PartCost {
    per_row: Option<Duration>,
}

impl PartCost {
    /// Rows the part takes this round: as many as fit in PART_BUDGET at its cost, at most `max`.
    pub fn rows(&self, max: usize) -> usize {
        match self.per_row {
            Some(cost) if !cost.is_zero() => {
                ((PART_BUDGET.as_secs_f64() / cost.as_secs_f64()) as usize).clamp(PART_FLOOR.min(max), max)
            }
            _ => max,
        }
    }

    /// Counts a run of the part: `rows` rows in `took`.
    pub fn observe(&mut self, rows: usize, took: Duration) {
        if rows == 0 {
            return;
        }
        let sample = took / rows as u32;
        let counted = rows >= ROWS_OBSERVED;
        self.per_row = match self.per_row {
            Some(cost) if counted || sample < cost => Some((cost * 3 + sample) / 4),
            None if counted => Some(sample),
            kept => kept,
        };
    }
}

/// The cost of each part of a round.
#[derive(Default, Debug)]
pub(super) struct PartCosts {
    pub outcomes: PartCost,
    pub fan_out: PartCost,
    pub claim: PartCost,
}

/// Rows and time of each part of one round, for PartCosts.
#[derive(Default, Debug)]
pub(super) struct PartsTook {
    pub outcomes: (usize, Duration),
    pub fan_out: (usize, Duration),
    pub claim: (usize, Duration),
}

impl PartCosts {
    pub fn observe(&mut self, took: &PartsTook) {
        self.outcomes.observe(took.outcomes.0, took.outcomes.1);
        self.fan_out.observe(took.fan_out.0, took.fan_out.1);
        self.claim.observe(took.claim.0, took.claim.1);
    }
}

/// Outcomes that start a round before ROUND_INTERVAL is up, and the most one round writes: half
/// a batch. When many webhooks answer at once the rest go in the next round, which follows at
/// once, so that no round grows with the number of pushes in flight.
pub(super) fn round_outcomes(batch: usize) -> usize {
    (batch / 2).max(1)
}

/// Whether the loop goes to the database now. An idle worker goes at once (a commit woke it);
/// while pushes are in flight rounds are batched, at most one per ROUND_INTERVAL however many
/// commits and outcomes arrive meanwhile, unless enough outcomes wait.
pub(super) fn round_due(in_flight: usize, since_last_round: Duration, outcomes_waiting: usize, batch: usize) -> bool {
    in_flight == 0 || since_last_round >= ROUND_INTERVAL || outcomes_waiting >= round_outcomes(batch)
}

/// Whether a round that has run for `spent` still takes on its next part.
pub(super) fn within_budget(spent: Duration) -> bool {
    spent < ROUND_BUDGET
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum FanOut {
    NotDue,
    /// Took `events` events; `more` when it stopped at its limit, with events left; `owed` when
    /// deliveries to webhooks another session holds locked are left for a later pass.
    Took {
        events: i64,
        more: bool,
        owed: bool,
    },
    /// Another session's pass holds the fan-out; the worker does not wait for it.
    Busy,
    /// Due, but the round's budget was spent before it: the next round does it.
    Deferred,
    /// Failed, and its failing event could not be set apart either: tried again after a pause.
    Failed,
}

/// What one round found (or two in a row, `followed_by`).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Round {
    pub claimed: usize,
    pub fan_out: FanOut,
    /// How long until the earliest pending delivery nobody holds falls due (or a paused endpoint
    /// may be sent to again, or a failed round is tried again).
    pub next_due: Option<Duration>,
    /// Outcomes were left for the next round (more than one round writes).
    pub outcomes_left: bool,
    /// The round's budget ran out before its fan-out or claim: the next round does them, at once.
    pub deferred: bool,
}

impl Round {
    /// A round that did not go to the database, or failed there.
    pub fn idle(next_due: Option<Duration>) -> Round {
        Round { claimed: 0, fan_out: FanOut::NotDue, next_due, outcomes_left: false, deferred: false }
    }

    /// What two rounds run one after the other found, as one: the later fan-out (its pass saw
    /// the later snapshot), the larger claim (another round follows at once when either filled
    /// its batch), the second's outcomes left, the sooner of their due times.
    pub fn followed_by(self, next: Round) -> Round {
        Round {
            claimed: self.claimed.max(next.claimed),
            fan_out: if next.fan_out == FanOut::NotDue { self.fan_out } else { next.fan_out },
            next_due: self.next_due.into_iter().chain(next.next_due).min(),
            outcomes_left: next.outcomes_left,
            deferred: self.deferred || next.deferred,
        }
    }

    /// Whether the loop should go round again at once instead of waiting: the claim filled its
    /// batch (more is probably due), the fan-out left events, outcomes are left to write or the
    /// budget left parts undone.
    pub fn wants_another(&self, batch: usize) -> bool {
        self.claimed >= batch
            || matches!(self.fan_out, FanOut::Took { more: true, .. })
            || self.outcomes_left
            || self.deferred
    }
}

/// A job the worker runs every so often (first right after start).
#[derive(Default)]
pub(super) struct Periodic {
    last_run: Option<Instant>,
}

impl Periodic {
    /// Time until the next run; None when the job is off (`every` is None).
    pub fn due_in(&self, every: Option<Duration>) -> Option<Duration> {
        let every = every?;
        Some(self.last_run.map_or(Duration::ZERO, |at| every.saturating_sub(at.elapsed())))
    }

    /// Whether to run now; if so, counts this as the run.
    pub fn run_now(&mut self, every: Option<Duration>) -> bool {
        let due = self.due_in(every) == Some(Duration::ZERO);
        if due {
            self.last_run = Some(Instant::now());
        }
        due
    }

    /// Counts the run just counted as not done: due again `after` from now.
    pub fn again_in(&mut self, every: Option<Duration>, after: Duration) {
        if let Some(every) = every {
            self.last_run = Instant::now().checked_sub(every.saturating_sub(after)).or(self.last_run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_wait_for_the_interval_only_while_pushes_are_in_flight() {
        let soon = ROUND_INTERVAL / 2;
        assert!(round_due(0, Duration::ZERO, 0, 500), "idle: at once");
        assert!(!round_due(3, soon, 10, 500));
        assert!(round_due(3, ROUND_INTERVAL, 0, 500));
        assert!(round_due(3, soon, 250, 500), "half a batch of outcomes waits");
        assert!(!round_due(3, soon, 249, 500));
    }

    #[test]
    fn a_fan_out_takes_fewer_events_the_more_webhooks_they_go_to() {
        assert_eq!(fan_out_events(0, FAN_OUT_DELIVERIES), FAN_OUT_EVENTS);
        assert_eq!(fan_out_events(1, FAN_OUT_DELIVERIES), FAN_OUT_EVENTS);
        assert_eq!(fan_out_events(100, FAN_OUT_DELIVERIES), 10);
        assert_eq!(fan_out_events(100, 500), 5, "and fewer when the round may make fewer deliveries");
        assert_eq!(fan_out_events(999, FAN_OUT_DELIVERIES), 1);
        assert_eq!(fan_out_events(50_000, FAN_OUT_DELIVERIES), 1, "one event at least");
    }

    #[test]
    fn a_part_takes_what_fits_in_its_budget_at_its_recent_cost() {
        let mut cost = PartCost::default();
        assert_eq!(cost.rows(500), 500, "everything until it was measured");
        cost.observe(5, Duration::from_secs(1));
        assert_eq!(cost.rows(500), 500, "a run of a few rows says nothing per row");
        cost.observe(100, Duration::from_millis(15));
        assert_eq!(cost.rows(500), 100, "150 µs a row: 100 rows in 15 ms");
        cost.observe(100, Duration::from_millis(75));
        assert_eq!(cost.rows(500), 50, "a slower run weighs a quarter: 300 µs a row");
        cost.observe(1000, Duration::from_secs(100));
        assert_eq!(cost.rows(500), PART_FLOOR, "however slow, a round gets on");
        assert_eq!(cost.rows(5), 5);
        cost.observe(5, Duration::from_secs(100));
        assert_eq!(cost.rows(500), PART_FLOOR, "a small slow run does not raise the estimate");
        for _ in 0..40 {
            cost.observe(PART_FLOOR, Duration::from_millis(1));
        }
        assert!(cost.rows(500) >= 100, "a part at its floor is measured and grows back: {}", cost.rows(500));
        let mut fast = PartCost::default();
        fast.observe(100, Duration::from_micros(100));
        assert_eq!(fast.rows(500), 500, "never more than the most");
    }

    #[test]
    fn another_round_follows_a_full_claim_or_a_fan_out_that_left_events() {
        assert!(!Round::idle(None).wants_another(500));
        let round =
            |claimed, fan_out| Round { claimed, fan_out, next_due: None, outcomes_left: false, deferred: false };
        assert!(round(500, FanOut::NotDue).wants_another(500));
        assert!(!round(499, FanOut::Busy).wants_another(500));
        assert!(round(0, FanOut::Took { events: 1000, more: true, owed: false }).wants_another(500));
        assert!(!round(0, FanOut::Took { events: 999, more: false, owed: true }).wants_another(500));
        assert!(Round { outcomes_left: true, ..round(0, FanOut::NotDue) }.wants_another(500));
        assert!(Round { deferred: true, ..round(0, FanOut::NotDue) }.wants_another(500));
    }

    #[test]
    fn two_rounds_in_a_row_are_seen_as_one() {
        let ms = Duration::from_millis;
        let first = Round {
            claimed: 3,
            fan_out: FanOut::Took { events: 2, more: false, owed: false },
            next_due: Some(ms(30)),
            outcomes_left: true,
            deferred: false,
        };
        let second =
            Round { claimed: 4, fan_out: FanOut::NotDue, next_due: Some(ms(5)), outcomes_left: false, deferred: true };
        assert_eq!(
            first.clone().followed_by(second),
            Round {
                claimed: 4,
                fan_out: FanOut::Took { events: 2, more: false, owed: false },
                next_due: Some(ms(5)),
                outcomes_left: false,
                deferred: true,
            }
        );
        assert_eq!(Round::idle(None).followed_by(Round::idle(Some(ms(1)))).next_due, Some(ms(1)));
        let operations = Round { fan_out: FanOut::Deferred, ..Round::idle(None) };
        assert_eq!(first.followed_by(operations).fan_out, FanOut::Deferred, "the second's fan-out, when it ran one");
    }

    #[test]
    fn a_round_takes_on_its_next_part_only_within_its_budget() {
        assert!(within_budget(Duration::ZERO));
        assert!(within_budget(ROUND_BUDGET - Duration::from_micros(1)));
        assert!(!within_budget(ROUND_BUDGET));
    }

    #[test]
    fn a_periodic_job_runs_first_at_once_then_every_interval_and_never_when_off() {
        let mut job = Periodic::default();
        assert_eq!(job.due_in(None), None);
        assert!(!job.run_now(None));
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(job.due_in(hour), Some(Duration::ZERO));
        assert!(job.run_now(hour));
        assert!(!job.run_now(hour));
        assert!(job.due_in(hour).unwrap() > Duration::from_secs(3599));
        assert!(job.run_now(Some(Duration::ZERO)));
    }

    #[test]
    fn a_periodic_run_held_back_is_due_again_after_the_pause_not_the_interval() {
        let mut job = Periodic::default();
        let hour = Some(Duration::from_secs(3600));
        assert!(job.run_now(hour));
        job.again_in(hour, Duration::from_secs(1));
        let due = job.due_in(hour).unwrap();
        assert!(due <= Duration::from_secs(1) && due > Duration::from_millis(900), "{due:?}");
        job.again_in(None, Duration::from_secs(1));
        assert_eq!(job.due_in(None), None);
    }
}
