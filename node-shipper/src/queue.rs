//! The bounded queue of batches waiting for the collector's acknowledgement.
//!
//! At most the front batch has a sequence number: a number is given to a batch right
//! before its first send, and the batch keeps it (and its contents) until the collector
//! acknowledges it, because the collector may already have applied it. Batches behind the
//! front were never sent, so when the queue grows past its memory budget they are merged
//! into one: counter deltas add up, the newest gauge value wins. An outage costs time
//! resolution, never counts.

use crate::series::SeriesKey;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// One batch of readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Set right before the first send attempt, never changed after.
    pub sequence: Option<u64>,
    /// Collection time of the newest readings, ms since the epoch.
    pub timestamp_ms: i64,
    /// Counter increases since the previous batch.
    pub counters: Vec<(SeriesKey, f64)>,
    /// Gauge values; `None` marks a series that disappeared (stale).
    pub gauges: Vec<(SeriesKey, Option<f64>)>,
}

impl Batch {
    pub fn approx_bytes(&self) -> usize {
        64 + self
            .counters
            .iter()
            .map(|(k, _)| k.approx_bytes() + 8)
            .sum::<usize>()
            + self
                .gauges
                .iter()
                .map(|(k, _)| k.approx_bytes() + 16)
                .sum::<usize>()
    }

    /// Adds `later` to `self` (which must not have been sent).
    fn absorb(&mut self, later: Batch) {
        let mut counters: HashMap<SeriesKey, f64> = self.counters.drain(..).collect();
        for (k, d) in later.counters {
            *counters.entry(k).or_default() += d;
        }
        let mut gauges: HashMap<SeriesKey, Option<f64>> = self.gauges.drain(..).collect();
        gauges.extend(later.gauges);
        self.counters = counters.into_iter().collect();
        self.counters.sort_by(|a, b| a.0.cmp(&b.0));
        self.gauges = gauges.into_iter().collect();
        self.gauges.sort_by(|a, b| a.0.cmp(&b.0));
        self.timestamp_ms = self.timestamp_ms.max(later.timestamp_ms);
    }
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    batches: VecDeque<Batch>,
    budget_bytes: usize,
    /// How many batches were merged away since start (for logs and metrics).
    pub coalesced: u64,
}

impl Queue {
    pub fn new(budget_bytes: usize, batches: Vec<Batch>) -> Self {
        Queue {
            batches: batches.into(),
            budget_bytes,
            coalesced: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn approx_bytes(&self) -> usize {
        self.batches.iter().map(Batch::approx_bytes).sum()
    }

    pub fn batches(&self) -> impl Iterator<Item = &Batch> {
        self.batches.iter()
    }

    pub fn front_mut(&mut self) -> Option<&mut Batch> {
        self.batches.front_mut()
    }

    pub fn pop_front(&mut self) -> Option<Batch> {
        self.batches.pop_front()
    }

    /// Appends a batch, merging the never-sent batches if the queue is over budget.
    pub fn push(&mut self, b: Batch) {
        self.batches.push_back(b);
        if self.approx_bytes() > self.budget_bytes {
            self.coalesce();
        }
    }

    /// Drops numbered batches the collector has already applied.
    pub fn drop_applied(&mut self, last_applied: u64) -> usize {
        let before = self.batches.len();
        self.batches
            .retain(|b| !matches!(b.sequence, Some(s) if s <= last_applied));
        before - self.batches.len()
    }

    fn coalesce(&mut self) {
        let first_unsent = self.batches.iter().position(|b| b.sequence.is_none());
        let Some(i) = first_unsent else { return };
        let rest: Vec<Batch> = self.batches.drain(i + 1..).collect();
        let n = rest.len() as u64;
        let target = &mut self.batches[i];
        for b in rest {
            target.absorb(b);
        }
        self.coalesced += n;
        if n > 0 {
            tracing::warn!(merged = n, queued_bytes = self.approx_bytes(),
                "collector unreachable and queue over budget: merged unsent batches (counts kept, time resolution lost)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> SeriesKey {
        SeriesKey::new("kappie_test", vec![("i".into(), i.to_string())])
    }

    fn batch(t: i64, n: usize, delta: f64) -> Batch {
        Batch {
            sequence: None,
            timestamp_ms: t,
            counters: (0..n).map(|i| (key(i), delta)).collect(),
            gauges: vec![(key(0), Some(t as f64))],
        }
    }

    #[test]
    fn coalescing_keeps_counts_and_bounds_memory() {
        let one = batch(0, 100, 1.0).approx_bytes();
        let mut q = Queue::new(one * 5, vec![]);
        q.push(batch(1, 100, 1.0));
        q.front_mut().unwrap().sequence = Some(7);
        for t in 2..=1000 {
            q.push(batch(t, 100, 1.0));
        }
        assert!(q.len() <= 6, "queue length {} not bounded", q.len());
        assert!(q.approx_bytes() <= one * 6);
        // The sent batch is untouched.
        let first = q.batches().next().unwrap();
        assert_eq!((first.sequence, first.timestamp_ms), (Some(7), 1));
        // Every delta of every series is still there.
        for i in 0..100 {
            let total: f64 = q
                .batches()
                .flat_map(|b| &b.counters)
                .filter(|(k, _)| *k == key(i))
                .map(|(_, d)| d)
                .sum();
            assert_eq!(total, 1000.0);
        }
        // The newest gauge value wins.
        let last = q.batches().last().unwrap();
        assert_eq!(last.timestamp_ms, 1000);
        assert_eq!(last.gauges, vec![(key(0), Some(1000.0))]);
        assert!(q.coalesced > 900);
    }

    #[test]
    fn drop_applied_only_drops_numbered_batches() {
        let mut a = batch(1, 1, 1.0);
        a.sequence = Some(4);
        let mut q = Queue::new(usize::MAX, vec![a, batch(2, 1, 1.0)]);
        assert_eq!(q.drop_applied(3), 0);
        assert_eq!(q.drop_applied(4), 1);
        assert_eq!(q.len(), 1);
    }
}
