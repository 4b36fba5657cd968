//! A webhook's rate limit (`max_requests_per_second`): a token bucket, kept as the one time the
//! generic cell rate algorithm needs per webhook (when the bucket would be full again). Pure.

use std::time::{Duration, Instant};

/// The bucket holds a tenth of a second's pushes, at least one: a webhook limited to 5/s gets one
/// push every 200 ms, one limited to 1,000/s bursts of up to 100.
const BURST_SECONDS: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Time one push costs: 1 / rate.
    interval: Duration,
    /// How far ahead of now the bucket's time may run: (burst - 1) pushes.
    tolerance: Duration,
}

impl RateLimit {
    /// A limit of `per_second` pushes (checked by webhook_settings.rs: above 0).
    pub fn new(per_second: f64) -> RateLimit {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        let burst = (per_second * BURST_SECONDS).floor().max(1.0);
        RateLimit { interval, tolerance: interval.mul_f64(burst - 1.0) }
    }

    /// Whether a push may leave at `now`, given the bucket's time `full_at` (None: full): the
    /// bucket's new time if so, or when the next push may leave if not.
    pub fn admit(&self, full_at: Option<Instant>, now: Instant) -> Result<Instant, Instant> {
        let full_at = full_at.map_or(now, |at| at.max(now));
        let free_at = full_at.checked_sub(self.tolerance).unwrap_or(now);
        if free_at > now {
            return Err(free_at);
        }
        Ok(full_at + self.interval)
    }

    /// When the next push may leave, if not now.
    pub fn next_free(&self, full_at: Instant, now: Instant) -> Option<Instant> {
        self.admit(Some(full_at), now).err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as the limit lets, from `start` for `length`: the send times.
    fn send_all(limit: RateLimit, start: Instant, length: Duration) -> Vec<Instant> {
        let (mut now, mut full_at, mut sent) = (start, None, Vec::new());
        while now < start + length {
            match limit.admit(full_at, now) {
                Ok(at) => {
                    full_at = Some(at);
                    sent.push(now);
                }
                Err(next) => now = next,
            }
        }
        sent
    }

    #[test]
    fn a_slow_limit_spaces_pushes_evenly() {
        let start = Instant::now();
        let sent = send_all(RateLimit::new(5.0), start, Duration::from_secs(2));
        assert_eq!(sent.len(), 10);
        for pair in sent.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(200));
        }
    }

    #[test]
    fn a_fast_limit_bursts_a_tenth_of_a_second_and_keeps_its_rate() {
        let start = Instant::now();
        let sent = send_all(RateLimit::new(1000.0), start, Duration::from_secs(1));
        assert_eq!(sent.iter().filter(|at| **at == start).count(), 100, "the first burst");
        assert!((1099..=1100).contains(&sent.len()), "{} in the first second", sent.len());
        // Any later second holds at most the rate.
        let later: Vec<_> = sent.iter().filter(|at| **at >= start + Duration::from_millis(100)).collect();
        assert!(later.len() <= 1000);
    }

    #[test]
    fn an_idle_bucket_fills_up_and_no_more() {
        let limit = RateLimit::new(20.0);
        let now = Instant::now();
        let burst = |from: Option<Instant>, at: Instant| {
            let first = limit.admit(from, at).unwrap();
            let second = limit.admit(Some(first), at).unwrap();
            (second, limit.next_free(second, at))
        };
        let (full_at, next) = burst(None, now);
        assert_eq!(next, Some(now + Duration::from_millis(50)), "a bucket of two");
        let much_later = now + Duration::from_secs(60);
        assert_eq!(limit.next_free(full_at, much_later), None);
        assert_eq!(burst(Some(full_at), much_later).1, Some(much_later + Duration::from_millis(50)));
    }
}
