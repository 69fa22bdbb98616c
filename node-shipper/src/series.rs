//! Series identity on the shipper side.

use serde::{Deserialize, Serialize};

/// A dataplane's reason text as a Kappie label value (SPEC §1, Cilium and Windows):
/// upper-cased, every run of characters other than A–Z and 0–9 one `_`, none at either end
/// ("CT: Map insertion failed" → `CT_MAP_INSERTION_FAILED`, `Mac Spoofing` →
/// `MAC_SPOOFING`). Upper-casing is ASCII's: other characters are separators like any.
pub fn upper_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().map(|c| c.to_ascii_uppercase()) {
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

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
