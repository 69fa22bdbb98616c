//! After the run: does the collector hold exactly what the shippers sent?
//!
//! Each node keeps the total of every counter and the last value of every gauge it sent.
//! Per metric, `sum by (node_name) (<metric>)` and `count(<metric>)` at the collector must
//! equal the node's own sums and series counts exactly (all values are whole numbers below
//! 2^53, so float sums are exact in any order); when the run has at most `per_series_max`
//! series, every series' value is compared too. A batch lost or applied twice shows as a
//! node whose sum is off.

use super::node::{series_key, Metric, Node};
use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// The outcome for one metric.
#[derive(Debug, serde::Serialize)]
pub struct MetricCheck {
    pub metric: &'static str,
    pub series_sent: usize,
    pub series_stored: usize,
    pub sum_sent: f64,
    pub sum_stored: f64,
    /// Nodes whose `sum by (node_name)` differs (or is missing).
    pub nodes_off: usize,
    /// Series compared one by one, and those that differ or are missing (0 and 0 when
    /// the per-series comparison was skipped).
    pub series_compared: usize,
    pub series_off: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub metrics: Vec<MetricCheck>,
    /// The first differences found, for the operator.
    pub examples: Vec<String>,
}

/// An instant query at `at_ms`.
fn query(http: &str, q: &str, at_ms: i64) -> anyhow::Result<Vec<Value>> {
    let url = format!("{http}/api/v1/query");
    let time = format!("{}.{:03}", at_ms.div_euclid(1000), at_ms.rem_euclid(1000));
    let resp = ureq::post(&url)
        .timeout(Duration::from_secs(300))
        .send_form(&[("query", q), ("time", &time)]);
    let body: Value = match resp {
        Ok(r) => serde_json::from_reader(r.into_reader())?,
        Err(ureq::Error::Status(code, r)) => {
            bail!("{q}: HTTP {code}: {}", r.into_string().unwrap_or_default())
        }
        Err(e) => return Err(e).context(format!("query {q}")),
    };
    match body["data"]["result"].as_array() {
        Some(a) => Ok(a.clone()),
        None => bail!("{q}: no result array in {body}"),
    }
}

fn value(v: &Value) -> f64 {
    v["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Compares the collector at `http` with `nodes`, evaluating at `at_ms`: the newest
/// timestamp sent (a query at the wall-clock time would lose series whose last sample is
/// older than the 5-minute lookback, after a long drain).
pub fn verify(
    http: &str,
    nodes: &[Node],
    per_series_max: usize,
    at_ms: i64,
) -> anyhow::Result<Verdict> {
    let total_series: usize = nodes.iter().map(Node::series).sum();
    let per_series = total_series <= per_series_max;
    let mut examples = Vec::new();
    let mut note = |s: String| {
        if examples.len() < 20 {
            examples.push(s)
        }
    };
    let mut metrics = Vec::new();
    for m in Metric::ALL {
        let name = m.name();
        let mut by_node: HashMap<String, f64> = HashMap::with_capacity(nodes.len());
        let mut series_sent = 0;
        for n in nodes {
            let (mut sum, mut count) = (0.0, 0);
            for (_, v) in n.values().filter(|(x, _)| *x == m) {
                sum += v;
                count += 1;
            }
            series_sent += count;
            by_node.insert(n.layout().node_name.clone(), sum);
        }
        let stored = query(http, &format!("sum by (node_name) ({name})"), at_ms)?;
        let mut nodes_off = 0;
        let mut seen = 0;
        let mut sum_stored = 0.0;
        for r in &stored {
            let node = r["metric"]["node_name"].as_str().unwrap_or("");
            let v = value(r);
            sum_stored += v;
            match by_node.get(node) {
                Some(&want) if want == v => seen += 1,
                Some(&want) => {
                    seen += 1;
                    nodes_off += 1;
                    note(format!("{name} on {node}: sent {want}, stored {v}"));
                }
                None => {
                    nodes_off += 1;
                    note(format!("{name}: node {node:?} stored but never simulated"));
                }
            }
        }
        if seen < by_node.len() {
            nodes_off += by_node.len() - seen;
            note(format!(
                "{name}: {} nodes have no series stored",
                by_node.len() - seen
            ));
        }
        let series_stored = query(http, &format!("count({name})"), at_ms)?
            .first()
            .map_or(0.0, value) as usize;
        if series_stored != series_sent {
            note(format!(
                "{name}: {series_sent} series sent, {series_stored} stored"
            ));
        }
        let (mut series_compared, mut series_off) = (0, 0);
        if per_series {
            let mut want: HashMap<String, f64> = HashMap::new();
            for n in nodes {
                let layout = n.layout();
                for (i, (x, v)) in n.values().enumerate() {
                    if x == m {
                        want.insert(layout.key(i), v);
                    }
                }
            }
            series_compared = want.len();
            for r in query(http, name, at_ms)? {
                let mut labels: Vec<(String, String)> = r["metric"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| *k != "__name__")
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let key = series_key(name, &mut labels);
                let v = value(&r);
                match want.remove(&key) {
                    Some(w) if w == v => {}
                    Some(w) => {
                        series_off += 1;
                        note(format!("{key}: sent {w}, stored {v}"));
                    }
                    None => note(format!("{key}: stored, never sent")),
                }
            }
            series_off += want.len();
            for k in want.keys().take(3) {
                note(format!("{k}: sent, not stored"));
            }
        }
        metrics.push(MetricCheck {
            metric: name,
            series_sent,
            series_stored,
            sum_sent: by_node.values().sum(),
            sum_stored,
            nodes_off,
            series_compared,
            series_off,
        });
    }
    let ok = metrics
        .iter()
        .all(|c| c.nodes_off == 0 && c.series_off == 0 && c.series_sent == c.series_stored);
    Ok(Verdict {
        ok,
        metrics,
        examples,
    })
}
