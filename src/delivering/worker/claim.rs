//! How much the worker claims, and from which webhook: what it holds claimed and unsent, the budget
//! of one claim, and each webhook's quota. Pure: no Postgres calls, so plain unit tests cover it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgrx::pg_sys;

use crate::delivering::retry::RetrySchedule;

/// The worker holds at most this many batches of claimed deliveries that are not sent yet.
const HELD_BATCHES: usize = 4;
/// Entities (as stored) one claim takes at most, and push bodies the worker holds unsent at most:
/// an invoice of tens of thousands of lines edited many times costs rounds, not the server's memory.
const CLAIM_BYTES: usize = 8 << 20;
const HELD_BYTES: usize = 32 << 20;
/// A webhook's claim quota covers what it can send in this long (see `claim_quota`).
pub(super) const CLAIM_HORIZON: Duration = Duration::from_secs(1);
/// The quota of a webhook with no pushes yet, in multiples of its in-flight cap.
const FIRST_QUOTA: f64 = 4.0;

/// A claimed delivery, as it travels with its push to the sender threads and back.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Claimed {
    pub delivery_id: i64,
    /// Its event, whose id names the delivery's partition (sql/partitions.sql).
    pub event_id: i64,
    pub webhook_id: i64,
    /// The push body's size, for the worker's memory budget.
    pub bytes: usize,
    pub attempts_before: i32,
    /// The extension instance it was claimed from; outcomes of a dropped extension are discarded.
    pub extension: pg_sys::Oid,
    /// The webhook's own retry schedule; None: billhook.retry_schedule.
    pub retry_schedule: Option<std::sync::Arc<RetrySchedule>>,
    /// When its event occurred, in seconds since the epoch: the start of its latency.
    pub occurred_at: f64,
}

/// What one claim may take: `rows` deliveries, entities up to `bytes` as read, with quotas for a
/// batch size of `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Budget {
    pub rows: usize,
    pub bytes: usize,
    pub batch: usize,
}

/// What a webhook may claim: its quota, and how many of its deliveries the worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Quota {
    pub webhook_id: i64,
    pub held: i32,
    pub quota: i32,
}

/// The deliveries the worker has claimed and the senders have not returned yet.
#[derive(Default)]
pub(super) struct Held {
    per_webhook: HashMap<i64, i32>,
    bytes: usize,
    /// A claim that returns one of these again (its lease ran out while it waited) must not queue
    /// a second push of it.
    deliveries: HashSet<i64>,
}

impl Held {
    /// Takes a claimed delivery in; false if it is held already.
    pub fn take(&mut self, claimed: &Claimed) -> bool {
        if !self.deliveries.insert(claimed.delivery_id) {
            return false;
        }
        *self.per_webhook.entry(claimed.webhook_id).or_default() += 1;
        self.bytes += claimed.bytes;
        true
    }

    /// Forgets a delivery the senders gave back.
    pub fn release(&mut self, claimed: &Claimed) {
        if !self.deliveries.remove(&claimed.delivery_id) {
            return;
        }
        self.bytes -= claimed.bytes;
        if let Some(n) = self.per_webhook.get_mut(&claimed.webhook_id) {
            *n -= 1;
            if *n == 0 {
                self.per_webhook.remove(&claimed.webhook_id);
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Held::default();
    }

    /// The next claim's budget: up to a batch, as long as the worker holds at most HELD_BATCHES
    /// and HELD_BYTES; nothing while the senders are not `accepting`.
    pub fn budget(&self, batch: usize, accepting: bool) -> Budget {
        let bytes = HELD_BYTES.saturating_sub(self.bytes).min(CLAIM_BYTES);
        let rows = if accepting && bytes > 0 {
            (HELD_BATCHES * batch).saturating_sub(self.deliveries.len()).min(batch)
        } else {
            0
        };
        Budget { rows, bytes, batch }
    }

    /// Each webhook the worker holds deliveries of or has a pace or pause for, with its claim
    /// quota; paused webhooks get none. The others start at `claim_quota(None, …)`.
    pub fn quotas(
        &self,
        max_in_flight: usize,
        batch: usize,
        paused: &[i64],
        paces: &HashMap<i64, Duration>,
    ) -> Vec<Quota> {
        let webhooks: HashSet<i64> = self.per_webhook.keys().chain(paces.keys()).chain(paused).copied().collect();
        webhooks
            .into_iter()
            .map(|webhook| Quota {
                webhook_id: webhook,
                held: self.per_webhook.get(&webhook).copied().unwrap_or(0),
                quota: if paused.contains(&webhook) {
                    0
                } else {
                    claim_quota(paces.get(&webhook).copied(), max_in_flight, batch)
                },
            })
            .collect()
    }
}

/// The most one webhook may hold claimed: half a batch, so the rest of a claim is left to others.
fn max_quota(batch: usize) -> usize {
    batch / 2
}

/// A webhook may hold as many claimed deliveries as it can send within CLAIM_HORIZON at the pace
/// its recent pushes took, at least its in-flight cap (so a dead endpoint holds only that many and
/// leaves the claims to the others) and at most `max_quota`. A webhook with no pushes yet starts
/// at FIRST_QUOTA times the cap.
pub(super) fn claim_quota(pace: Option<Duration>, max_in_flight: usize, batch: usize) -> i32 {
    let cap = max_in_flight as f64;
    let sendable = match pace {
        Some(pace) => cap * CLAIM_HORIZON.as_secs_f64() / pace.as_secs_f64().max(1e-6),
        None => cap * FIRST_QUOTA,
    };
    sendable.min(max_quota(batch) as f64).max(cap) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(delivery_id: i64, webhook_id: i64, bytes: usize) -> Claimed {
        Claimed {
            delivery_id,
            event_id: delivery_id,
            webhook_id,
            bytes,
            attempts_before: 0,
            extension: pg_sys::Oid::from(1),
            retry_schedule: None,
            occurred_at: 0.0,
        }
    }

    #[test]
    fn a_fast_webhook_may_hold_half_a_batch_a_dead_one_only_its_cap() {
        assert_eq!(claim_quota(Some(Duration::from_millis(1)), 8, 500), 250);
        assert_eq!(claim_quota(Some(Duration::from_millis(100)), 8, 500), 80);
        assert_eq!(claim_quota(Some(Duration::from_secs(10)), 8, 500), 8);
        assert_eq!(claim_quota(Some(Duration::ZERO), 8, 500), 250);
        assert_eq!(claim_quota(None, 8, 500), 32);
        assert_eq!(claim_quota(None, 8, 10), 8, "never below the in-flight cap");
    }

    #[test]
    fn a_delivery_is_held_once_and_released_once() {
        let mut held = Held::default();
        assert!(held.take(&claimed(1, 7, 100)));
        assert!(!held.take(&claimed(1, 7, 100)), "claimed again after its lease ran out");
        assert!(held.take(&claimed(2, 7, 50)));
        assert_eq!(held.bytes, 150);
        assert_eq!(held.quotas(8, 500, &[], &HashMap::new())[0].held, 2);
        held.release(&claimed(1, 7, 100));
        held.release(&claimed(1, 7, 100));
        assert_eq!((held.bytes, held.per_webhook.get(&7).copied()), (50, Some(1)));
        held.release(&claimed(2, 7, 50));
        assert!(held.per_webhook.is_empty() && held.deliveries.is_empty() && held.bytes == 0);
    }

    #[test]
    fn the_budget_stops_at_four_batches_held_or_the_byte_limits() {
        let mut held = Held::default();
        assert_eq!(held.budget(500, true), Budget { rows: 500, bytes: CLAIM_BYTES, batch: 500 });
        assert_eq!(held.budget(500, false).rows, 0, "senders not accepting");
        for id in 0..1800 {
            held.take(&claimed(id, id % 3, 10));
        }
        assert_eq!(held.budget(500, true).rows, 200);
        held.take(&claimed(5000, 1, HELD_BYTES - held.bytes - 10));
        assert_eq!(held.budget(500, true).bytes, 10);
        held.take(&claimed(5001, 1, 10));
        assert_eq!(held.budget(500, true).rows, 0, "no bytes left");
    }

    #[test]
    fn paused_webhooks_get_no_quota_and_paced_ones_their_pace() {
        let held = Held::default();
        let paces = HashMap::from([(1, Duration::from_millis(100)), (2, Duration::from_millis(1))]);
        let mut quotas = held.quotas(8, 500, &[2, 3], &paces);
        quotas.sort_by_key(|q| q.webhook_id);
        let got: Vec<(i64, i32)> = quotas.iter().map(|q| (q.webhook_id, q.quota)).collect();
        assert_eq!(got, [(1, 80), (2, 0), (3, 0)]);
    }
}
