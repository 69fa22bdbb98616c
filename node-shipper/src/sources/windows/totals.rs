//! Node totals from per-endpoint (per-port) cumulative counters.
//!
//! HNS and VFP count per endpoint and per port; Kappie's metrics are per node. A node total
//! is a sum over endpoints — not the value of whichever endpoint was read last, which is
//! what Retina's `hnsstats` plugin reports: it `Set`s one node-level gauge per endpoint in
//! turn (`notifyHnsStats` in `pkg/plugin/hnsstats/hnsstats_windows.go`), so each collection
//! ends with the last endpoint's numbers.
//!
//! A plain sum of the endpoints present is no counter either: when a pod goes, its
//! endpoint's counts leave the sum, the total falls, and the agent takes the fall for a
//! reset and counts the whole remaining sum again. So [`NodeTotals`] adds up *increases*:
//! per (endpoint, series) it keeps the last value read, adds what each endpoint gained since,
//! and keeps what a departed endpoint contributed. The totals only grow, which is what the
//! agent's baselines ([`crate::state::Baselines::delta`]) expect of a counter.
//!
//! The totals start at zero with the shipper: what the endpoints counted before the first
//! collection is not counted, and neither is what they counted while the shipper was
//! stopped (the source keeps nothing on disk; the agent sees the restarted total below its
//! baseline and takes it for a reset, so nothing is counted twice). Per-endpoint counters are
//! also reported as they are (`kappie_interface_stats`), and those the agent's persisted
//! baselines carry across restarts exactly.

use crate::source::Observation;
use std::collections::{BTreeMap, HashMap};

/// Collections after which an endpoint's last values are forgotten if it has not been seen.
/// Endpoint and port names are GUIDs, never reused; keeping a missing endpoint's values for a
/// while means one that missed a collection (a failed call) is not taken for a new one,
/// whose whole value would be added.
const FORGET_AFTER: u64 = 360;

/// A node-level series: metric and labels (sorted by name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId {
    pub metric: &'static str,
    pub labels: Vec<(&'static str, String)>,
}

impl SeriesId {
    pub fn new(metric: &'static str, mut labels: Vec<(&'static str, String)>) -> Self {
        labels.sort();
        SeriesId { metric, labels }
    }
}

/// One endpoint's (or port's) cumulative value of one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The endpoint ID or port name.
    pub entity: String,
    pub series: SeriesId,
    pub value: u64,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    value: u64,
    collection: u64,
}

/// Per-node counters summed from per-endpoint ones; see the module documentation.
#[derive(Debug, Default)]
pub struct NodeTotals {
    totals: BTreeMap<SeriesId, u64>,
    last: HashMap<(String, SeriesId), Last>,
    /// Collections added so far.
    collections: u64,
}

impl NodeTotals {
    /// Adds one collection's readings, all read successfully. The first collection only
    /// records where each endpoint stands (its series start at zero); later, an endpoint adds
    /// what it gained since its last reading, all of its value if it is new, and all of it
    /// again if it fell below its last reading (its counters restarted).
    pub fn add(&mut self, readings: impl IntoIterator<Item = Reading>) {
        let first = self.collections == 0;
        self.collections += 1;
        let now = self.collections;
        for r in readings {
            let key = (r.entity, r.series);
            let gained = match self.last.get(&key) {
                Some(last) if r.value >= last.value => r.value - last.value,
                Some(_) => r.value,
                None if first => 0,
                None => r.value,
            };
            let total = self.totals.entry(key.1.clone()).or_insert(0);
            *total = total.saturating_add(gained);
            self.last.insert(
                key,
                Last {
                    value: r.value,
                    collection: now,
                },
            );
        }
        self.last
            .retain(|_, last| now - last.collection <= FORGET_AFTER);
    }

    /// Every node total, as cumulative counter observations.
    pub fn observations(&self) -> impl Iterator<Item = Observation> + '_ {
        self.totals
            .iter()
            .map(|(s, v)| Observation::counter(s.metric, s.labels.clone(), *v as f64))
    }

    /// One node total (tests).
    #[cfg(test)]
    pub fn total(&self, metric: &'static str, labels: Vec<(&'static str, String)>) -> Option<u64> {
        self.totals.get(&SeriesId::new(metric, labels)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(entity: &str, value: u64) -> Reading {
        Reading {
            entity: entity.into(),
            series: SeriesId::new(
                "kappie_forward_count",
                vec![("direction", "ingress".into())],
            ),
            value,
        }
    }

    fn total(t: &NodeTotals) -> Option<u64> {
        t.total(
            "kappie_forward_count",
            vec![("direction", "ingress".into())],
        )
    }

    /// Regression for the overwrite in Retina's hnsstats (the node total set to the last
    /// endpoint's value): three endpoints that each gained something must add up.
    #[test]
    fn node_total_is_the_sum_of_every_endpoints_gain_not_the_last_endpoints() {
        let mut t = NodeTotals::default();
        t.add([packets("a", 1000), packets("b", 500), packets("c", 20)]);
        assert_eq!(
            total(&t),
            Some(0),
            "the first collection is the starting point"
        );
        t.add([packets("a", 1001), packets("b", 510), packets("c", 120)]);
        assert_eq!(total(&t), Some(1 + 10 + 100));
    }

    #[test]
    fn a_departed_endpoint_keeps_its_contribution_and_a_new_one_adds_all_of_its_value() {
        let mut t = NodeTotals::default();
        t.add([packets("a", 1000), packets("b", 500)]);
        t.add([packets("a", 1100), packets("b", 600)]);
        assert_eq!(total(&t), Some(200));
        // b's pod is gone, c's arrived with 7 packets since its endpoint was made.
        t.add([packets("a", 1150), packets("c", 7)]);
        assert_eq!(total(&t), Some(200 + 50 + 7));
    }

    #[test]
    fn an_endpoint_counting_from_zero_again_adds_its_new_value() {
        let mut t = NodeTotals::default();
        t.add([packets("a", 1000)]);
        t.add([packets("a", 1100)]);
        t.add([packets("a", 30)]);
        assert_eq!(total(&t), Some(100 + 30));
    }

    #[test]
    fn an_endpoint_missing_from_one_collection_is_not_taken_for_a_new_one() {
        let mut t = NodeTotals::default();
        t.add([packets("a", 1000), packets("b", 500)]);
        t.add([packets("a", 1010)]);
        t.add([packets("a", 1020), packets("b", 505)]);
        assert_eq!(total(&t), Some(20 + 5));
    }

    #[test]
    fn an_endpoint_unseen_for_long_is_forgotten() {
        let mut t = NodeTotals::default();
        t.add([packets("a", 1000), packets("b", 500)]);
        for _ in 0..FORGET_AFTER + 1 {
            t.add([packets("a", 1000)]);
        }
        assert_eq!(t.last.len(), 1);
        assert_eq!(total(&t), Some(0));
    }
}
