//! When to try a failed push again. Pure.
//!
//! The schedule lists the delay before each retry (Moneybird retries 10 times at growing
//! intervals); every delay is spread by ±20 % jitter so a recovering receiver is not hit by a
//! thundering herd. A `Retry-After` from the receiver (429/503) is honoured when it asks for more
//! time than the schedule, up to the schedule's longest delay.

use std::ffi::CStr;
use std::time::{Duration, SystemTime};

/// 10 retries over about 40 hours: 1m 5m 15m 30m 1h 2h 4h 8h 12h 12h.
pub const DEFAULT_SCHEDULE: &CStr = c"1m,5m,15m,30m,1h,2h,4h,8h,12h,12h";
pub const JITTER: f64 = 0.2;
pub const MAX_RETRIES: usize = 100;
/// The longest delay before one retry: a delivery's next attempt stays a valid timestamp, and a
/// schedule that waits longer is almost certainly a typo.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 86400);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// Parses a comma-separated list of delays such as `"30s,5m,1h"` (units ms, s, m, h, d).
    /// An empty list means never retry.
    /// At most [`MAX_RETRIES`] delays of at most [`MAX_DELAY`] each.
    pub fn parse(text: &str) -> Result<RetrySchedule, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_delay)
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > MAX_RETRIES {
            return Err(format!("{} retries are more than the {MAX_RETRIES} allowed", delays.len()));
        }
        Ok(RetrySchedule { delays })
    }

    /// The delay before the next attempt after `attempts_made` attempts (the first included) have
    /// failed, or None when no retry is left. `jitter` is uniform in [-1, 1].
    pub fn next_delay(&self, attempts_made: u32, jitter: f64, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self.delays.get((attempts_made as usize).checked_sub(1)?)?;
        let spread = scheduled.mul_f64(1.0 + JITTER * jitter.clamp(-1.0, 1.0));
        let longest = self.delays.iter().max().copied().unwrap_or_default();
        Some(match retry_after {
            Some(asked) => spread.max(asked.min(longest)),
            None => spread,
        })
    }
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NextStep {
    Succeeded,
    RetryIn(Duration),
    Failed,
}

impl RetrySchedule {
    /// After attempt number `attempts_made` succeeded or failed (with the receiver's Retry-After).
    pub fn next_step(
        &self,
        succeeded: bool,
        attempts_made: u32,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> NextStep {
        if succeeded {
            return NextStep::Succeeded;
        }
        self.next_delay(attempts_made, jitter, retry_after).map_or(NextStep::Failed, NextStep::RetryIn)
    }
}

fn parse_delay(part: &str) -> Result<Duration, String> {
    let split = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
    let (number, unit) = part.split_at(split);
    if number.is_empty() {
        return Err(format!("\"{part}\" is not a number followed by a unit"));
    }
    // All digits: a number too large for u64 is simply too long a delay.
    let value: u64 = number.parse().unwrap_or(u64::MAX);
    let unit_millis: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit \"{other}\" in \"{part}\"")),
    };
    match value.checked_mul(unit_millis).map(Duration::from_millis) {
        Some(delay) if delay <= MAX_DELAY => Ok(delay),
        _ => Err(format!("\"{part}\" is longer than the longest delay allowed, 30d")),
    }
}

/// Answers that slow down the whole endpoint (Standard Webhooks: the receiver is overloaded or
/// its gateway cannot reach it): nothing more is sent to it for as long as its `Retry-After` asks,
/// and that delivery's retry waits at least as long.
pub fn asks_to_slow_down(http_status: u16) -> bool {
    matches!(http_status, 429 | 502 | 503 | 504)
}

/// `410 Gone`: the receiver says the endpoint is gone for good, so billhook disables the webhook
/// at once (its deliveries are kept, held until it is enabled again).
pub const GONE: u16 = 410;

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn default_schedule_is_ten_retries_over_about_a_day_and_a_half() {
        let schedule = RetrySchedule::parse(DEFAULT_SCHEDULE.to_str().unwrap()).unwrap();
        assert_eq!(schedule.delays.len(), 10);
        let total: Duration = (1..=10).map(|n| schedule.next_delay(n, 0.0, None).unwrap()).sum();
        assert_eq!(total, minutes(2391));
        assert_eq!(schedule.next_delay(11, 0.0, None), None, "no eleventh retry");
        assert_eq!(schedule.next_delay(0, 0.0, None), None);
    }

    #[test]
    fn delays_grow_and_jitter_stays_within_twenty_percent() {
        let schedule = RetrySchedule::parse(DEFAULT_SCHEDULE.to_str().unwrap()).unwrap();
        let delays: Vec<Duration> = (1..=10).map(|n| schedule.next_delay(n, 0.0, None).unwrap()).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(schedule.next_delay(1, 1.0, None), Some(Duration::from_secs(72)));
        assert_eq!(schedule.next_delay(1, -1.0, None), Some(Duration::from_secs(48)));
        assert_eq!(schedule.next_delay(1, 7.0, None), Some(Duration::from_secs(72)), "clamped");
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let schedule = RetrySchedule::parse("10s,1m").unwrap();
        assert_eq!(schedule.next_delay(1, 0.0, Some(Duration::from_secs(30))), Some(Duration::from_secs(30)));
        assert_eq!(schedule.next_delay(1, 0.0, Some(Duration::from_secs(2))), Some(Duration::from_secs(10)));
        assert_eq!(schedule.next_delay(1, 0.0, Some(Duration::from_secs(86400))), Some(minutes(1)));
    }

    #[test]
    fn next_step_retries_until_the_schedule_runs_out() {
        let schedule = RetrySchedule::parse("10s,20s").unwrap();
        assert_eq!(schedule.next_step(true, 3, 0.0, None), NextStep::Succeeded);
        assert_eq!(schedule.next_step(false, 1, 0.0, None), NextStep::RetryIn(Duration::from_secs(10)));
        assert_eq!(schedule.next_step(false, 2, 0.0, None), NextStep::RetryIn(Duration::from_secs(20)));
        assert_eq!(schedule.next_step(false, 3, 0.0, None), NextStep::Failed);
    }

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(
            RetrySchedule::parse(" 500ms, 2s,3m ,1h,1d").unwrap().delays,
            vec![Duration::from_millis(500), Duration::from_secs(2), minutes(3), minutes(60), minutes(1440)]
        );
        assert_eq!(RetrySchedule::parse("").unwrap().delays, vec![]);
        assert!(RetrySchedule::parse("5").unwrap_err().contains("unknown unit"));
        assert!(RetrySchedule::parse("5x").is_err());
        assert!(RetrySchedule::parse("m").is_err());
    }

    #[test]
    fn huge_delays_and_too_many_retries_are_refused_without_overflow() {
        assert_eq!(RetrySchedule::parse("30d").unwrap().delays, vec![MAX_DELAY]);
        for huge in ["31d", "18446744073709551615d", "99999999999999999999s", "2592000001ms"] {
            let error = RetrySchedule::parse(huge).unwrap_err();
            assert!(error.contains("longer than the longest delay allowed, 30d"), "{huge}: {error}");
        }
        assert!(RetrySchedule::parse(&vec!["1s"; 100].join(",")).is_ok());
        assert_eq!(
            RetrySchedule::parse(&vec!["1s"; 101].join(",")).unwrap_err(),
            "101 retries are more than the 100 allowed"
        );
    }

    #[test]
    fn overload_and_gateway_answers_slow_down_the_endpoint_other_failures_do_not() {
        for status in [429, 502, 503, 504] {
            assert!(asks_to_slow_down(status), "{status}");
        }
        for status in [200, 400, 404, GONE, 500, 501, 505] {
            assert!(!asks_to_slow_down(status), "{status}");
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 22 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 22 Nov 2026 10:05:00 GMT", now), Some(minutes(5)));
        assert_eq!(parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
