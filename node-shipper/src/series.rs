//! Series identity on the shipper side.

use serde::{Deserialize, Serialize};

/// A metric name and its labels (sorted by name, including `node_name` and `cluster`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub metric: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    pub fn new(metric: &str, mut labels: Vec<(String, String)>) -> Self {
        labels.sort();
        SeriesKey {
            metric: metric.to_owned(),
            labels,
        }
    }

    /// Approximate heap bytes, for the queue's memory budget.
    pub fn approx_bytes(&self) -> usize {
        self.metric.len()
            + self
                .labels
                .iter()
                .map(|(n, v)| n.len() + v.len() + 48)
                .sum::<usize>()
            + 48
    }
}

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Counter,
    Gauge,
}
