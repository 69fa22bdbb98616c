//! The Cilium dataplane source: `kappie_forward_count/bytes` and `kappie_drop_count/bytes`
//! from the Cilium agent's Prometheus endpoint (`--cilium-metrics-url`), on nodes where
//! Cilium's own eBPF programs forward and drop the packets.
//!
//! Cilium serves `cilium_forward_count_total` / `cilium_forward_bytes_total` {direction} and
//! `cilium_drop_count_total` / `cilium_drop_bytes_total` {direction, reason} (client_golang's
//! text format 0.0.4: families sorted by name, labels sorted by name, values in Go's
//! shortest `%g`, so `1.287642e+06`). The agent reads them on every scrape from its pinned
//! per-CPU map `cilium_metrics` (`<bpffs>/tc/globals/cilium_metrics`), so they are counts
//! since that map was created, not since the agent started: an agent restart that finds the
//! pinned map continues them, one that creates the map anew (an upgrade that changed its
//! layout, a bpffs that does not outlive the agent) starts them from zero.
//!
//! Which of the two happened is judged from the pin of that map when the shipper can see it
//! (a new map is a new pin, a new inode) and from `cilium_process_start_time_seconds`
//! otherwise (a new agent process is then taken as a reset). On a reset every baseline of the
//! four metrics is forgotten ([`Source::restarted_metrics`]), so the counts since the
//! restart are all new even where they already climbed past the old values; the marker is
//! saved with the baselines ([`Source::checkpoint`]) so a shipper restart judges the same
//! way. An agent that is down is one warning ([`SourceError::Unavailable`]), no data, and
//! counting resumes when it is back.

use crate::source::{Observation, Source, SourceError};
use openmetrics_parser::{MetricNumber, PrometheusType, PrometheusValue};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The metrics this source gives; all of them restart together with the agent's counters.
pub const METRICS: [&str; 4] = [
    "kappie_forward_count",
    "kappie_forward_bytes",
    "kappie_drop_count",
    "kappie_drop_bytes",
];

/// Cilium's metric (a counter) → Kappie's, and whether it carries a drop reason.
const MAPPING: [(&str, &str, bool); 4] = [
    ("cilium_forward_count_total", "kappie_forward_count", false),
    ("cilium_forward_bytes_total", "kappie_forward_bytes", false),
    ("cilium_drop_count_total", "kappie_drop_count", true),
    ("cilium_drop_bytes_total", "kappie_drop_bytes", true),
];

/// client_golang's process collector, registered by Cilium with namespace `cilium`.
const START_TIME: &str = "cilium_process_start_time_seconds";

/// How long one scrape of the agent may take (it is local; a slow one must not hold up the
/// other sources of the collection).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

/// The pinned map Cilium's forward and drop counters live in, under the bpffs root.
pub fn metrics_map_pin(bpffs_root: &Path) -> PathBuf {
    bpffs_root.join("tc/globals/cilium_metrics")
}

/// Cilium's drop reason text as a Kappie `reason`: upper-cased, every run of characters
/// other than A–Z and 0–9 one `_`, no `_` at either end ("CT: Map insertion failed" →
/// `CT_MAP_INSERTION_FAILED`); `UNKNOWN` when nothing is left.
pub fn reason_name(cilium: &str) -> String {
    let out = crate::series::upper_snake(cilium);
    if out.is_empty() {
        // Nothing left to name it by; an empty label value would be no label at all.
        return "UNKNOWN".into();
    }
    out
}

/// A Kappie metric and its labels (without node and cluster).
type KappieSeries = (&'static str, Vec<(&'static str, String)>);

/// What one scrape gave.
#[derive(Debug, Default, PartialEq)]
pub struct Scrape {
    /// `cilium_process_start_time_seconds`, when served.
    pub agent_start: Option<f64>,
    /// Kappie's series, summed over the Cilium series that map to each.
    pub observations: Vec<Observation>,
}

/// Parses the agent's exposition and maps its forward and drop counters; everything else is
/// ignored.
pub fn parse(text: &str) -> Result<Scrape, String> {
    // A third-party parser on another process's output: a panic in it is an error of this
    // collection, not the end of the shipper.
    let parsed =
        std::panic::catch_unwind(|| openmetrics_parser::prometheus::parse_prometheus(text))
            .map_err(|_| "the exposition parser panicked".to_owned())?
            .map_err(|e| e.to_string())?;
    let mut sums: BTreeMap<KappieSeries, f64> = BTreeMap::new();
    for (cilium, kappie, with_reason) in MAPPING {
        let Some(family) = parsed.families.get(cilium) else {
            continue;
        };
        if family.family_type != PrometheusType::Counter {
            return Err(format!(
                "{cilium} is a {} (a counter was expected)",
                family.family_type
            ));
        }
        for sample in family.iter_samples() {
            let PrometheusValue::Counter(c) = &sample.value else {
                continue;
            };
            let labels = sample.get_labelset().map_err(|e| e.to_string())?;
            let label = |name: &str| {
                labels
                    .iter()
                    .find(|(n, _)| n.as_str() == name)
                    .map(|(_, v)| v.as_str())
                    .ok_or(format!("{cilium} has a series without the {name} label"))
            };
            let mut kappie_labels = Vec::with_capacity(2);
            if with_reason {
                kappie_labels.push(("reason", reason_name(label("reason")?)));
            }
            kappie_labels.push(("direction", label("direction")?.to_ascii_lowercase()));
            *sums.entry((kappie, kappie_labels)).or_default() += number(&c.value);
        }
    }
    let agent_start = parsed
        .families
        .get(START_TIME)
        .and_then(|f| f.iter_samples().next())
        .and_then(|s| match &s.value {
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => Some(number(n)),
            _ => None,
        });
    Ok(Scrape {
        agent_start,
        observations: sums
            .into_iter()
            .map(|((metric, labels), v)| Observation::counter(metric, labels, v))
            .collect(),
    })
}

fn number(n: &MetricNumber) -> f64 {
    n.as_f64()
}

/// The lifetime of the agent's counters: what changes when they restart from zero.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    /// `cilium_process_start_time_seconds`.
    pub agent_start: Option<f64>,
    /// Device and inode of the pin of the `cilium_metrics` map: a map created anew is a new
    /// pin (bpffs gives every new file a new inode), one the agent reopened is the same.
    pub map_pin: Option<(u64, u64)>,
}

impl Epoch {
    /// Whether the counters seen in `now` restarted from zero since `self`. With the map's pin
    /// seen both times, only a new map is a restart (a restarted agent that reopened the
    /// pinned map continues its counts); without, a new agent process is taken as one.
    pub fn restarted_since(&self, now: &Epoch) -> bool {
        match (self.map_pin, now.map_pin) {
            (Some(before), Some(after)) => before != after,
            _ => matches!((self.agent_start, now.agent_start), (Some(a), Some(b)) if a != b),
        }
    }
}

fn pin_identity(pin: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(pin).ok().map(|m| (m.dev(), m.ino()))
}

/// The source.
pub struct CiliumSource {
    url: String,
    agent: ureq::Agent,
    map_pin: PathBuf,
    /// The counters' lifetime at the last good collection (or restored from the state file).
    epoch: Option<Epoch>,
    restarted: bool,
}

impl CiliumSource {
    /// Reads `url`; judges restarts by the pin of `cilium_metrics` under `bpffs_root` too.
    pub fn new(url: &str, bpffs_root: &Path) -> Self {
        CiliumSource {
            url: url.to_owned(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout(TIMEOUT)
                .build(),
            map_pin: metrics_map_pin(bpffs_root),
            epoch: None,
            restarted: false,
        }
    }

    fn fetch(&self) -> Result<String, SourceError> {
        let unavailable = |err: String| SourceError::Unavailable {
            what: format!("the Cilium agent's metrics at {}", self.url),
            err,
        };
        let resp = self
            .agent
            .get(&self.url)
            // The classic text format, whatever the agent could negotiate.
            .set("Accept", "text/plain;version=0.0.4")
            .call()
            .map_err(|e| match e {
                ureq::Error::Status(code, _) => unavailable(format!("it answered HTTP {code}")),
                ureq::Error::Transport(t) => unavailable(t.to_string()),
            })?;
        resp.into_string().map_err(|e| SourceError::Read {
            path: PathBuf::from(&self.url),
            err: e,
        })
    }
}

impl Source for CiliumSource {
    fn name(&self) -> &'static str {
        "cilium"
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        // The pin before and after the scrape: a map replaced while the agent answered
        // leaves it open which map the values are from, so this collection is skipped (the
        // next one sees the new map and its values together).
        let pin_before = pin_identity(&self.map_pin);
        let text = self.fetch()?;
        let map_pin = pin_identity(&self.map_pin);
        if map_pin != pin_before {
            tracing::info!(pin = %self.map_pin.display(), "Cilium's metrics map was replaced during the scrape; skipping this collection");
            return Ok(());
        }
        let scrape = parse(&text).map_err(|msg| SourceError::Parse {
            path: PathBuf::from(&self.url),
            msg,
        })?;
        let now = Epoch {
            agent_start: scrape.agent_start,
            map_pin,
        };
        if let Some(before) = &self.epoch {
            if before.restarted_since(&now) {
                tracing::info!(before = ?before, now = ?now, "the Cilium agent's counters restarted from zero; counting on from there");
                self.restarted = true;
            }
        }
        self.epoch = Some(now);
        out.extend(scrape.observations);
        Ok(())
    }

    fn restarted_metrics(&mut self) -> Vec<&'static str> {
        match std::mem::take(&mut self.restarted) {
            true => METRICS.to_vec(),
            false => Vec::new(),
        }
    }

    fn checkpoint(&self) -> Option<String> {
        self.epoch
            .as_ref()
            .and_then(|e| serde_json::to_string(e).ok())
    }

    fn restore(&mut self, checkpoint: &str) {
        match serde_json::from_str(checkpoint) {
            Ok(e) => self.epoch = Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the saved Cilium counter marker; an agent restart while the shipper was away goes unnoticed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Kind;

    #[test]
    fn reasons_become_upper_snake() {
        for (cilium, kappie) in [
            ("Policy denied", "POLICY_DENIED"),
            ("CT: Map insertion failed", "CT_MAP_INSERTION_FAILED"),
            (
                "LB, sock cgroup: No backend slot entry found",
                "LB_SOCK_CGROUP_NO_BACKEND_SLOT_ENTRY_FOUND",
            ),
            (
                "No tunnel/encapsulation endpoint (datapath BUG!)",
                "NO_TUNNEL_ENCAPSULATION_ENDPOINT_DATAPATH_BUG",
            ),
            (
                "CT: Can't create entry from packet",
                "CT_CAN_T_CREATE_ENTRY_FROM_PACKET",
            ),
            ("  Invalid packet  ", "INVALID_PACKET"),
            ("181", "181"),
            ("---", "UNKNOWN"),
        ] {
            assert_eq!(reason_name(cilium), kappie, "{cilium:?}");
        }
    }

    fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        s.observations
            .iter()
            .find(|o| {
                o.metric == metric
                    && o.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| o.labels.iter().any(|(ok, ov)| ok == k && ov == v))
            })
            .map(|o| o.value)
    }

    #[test]
    fn the_agents_exposition_maps_to_kappie_series() {
        let s = parse(&crate::sources::fixture("cilium_metrics")).unwrap();
        assert_eq!(s.agent_start, Some(1.71763381923e9));
        assert!(s.observations.iter().all(|o| o.kind == Kind::Counter));
        assert_eq!(
            value(&s, "kappie_forward_count", &[("direction", "ingress")]),
            Some(1287642.0)
        );
        assert_eq!(
            value(&s, "kappie_forward_bytes", &[("direction", "egress")]),
            Some(336789012.0)
        );
        assert_eq!(
            value(
                &s,
                "kappie_drop_count",
                &[("reason", "POLICY_DENIED"), ("direction", "ingress")]
            ),
            Some(171468.0)
        );
        // The comma in a real Cilium reason is inside the quotes: one series, not two.
        assert_eq!(
            value(
                &s,
                "kappie_drop_bytes",
                &[
                    ("reason", "LB_SOCK_CGROUP_NO_BACKEND_SLOT_ENTRY_FOUND"),
                    ("direction", "ingress")
                ]
            ),
            Some(148.0)
        );
        // 2 forward + 2 forward bytes, 6 reasons × 2; nothing from the other families (the
        // escaping fixture family has a reason label too, and is not Cilium's drop counter).
        assert_eq!(s.observations.len(), 4 + 12, "{:#?}", s.observations);
    }

    #[test]
    fn series_that_map_to_one_kappie_series_are_summed() {
        let text = "# HELP cilium_drop_count_total Total dropped packets, tagged by drop reason and ingress/egress direction\n\
                    # TYPE cilium_drop_count_total counter\n\
                    cilium_drop_count_total{direction=\"INGRESS\",reason=\"Policy denied\"} 5\n\
                    cilium_drop_count_total{direction=\"INGRESS\",reason=\"Policy-denied\"} 7\n\
                    cilium_drop_count_total{direction=\"INGRESS\",reason=\"Policy denied (L3)\"} 11\n";
        let s = parse(text).unwrap();
        assert_eq!(
            value(
                &s,
                "kappie_drop_count",
                &[("reason", "POLICY_DENIED"), ("direction", "ingress")]
            ),
            Some(12.0)
        );
        assert_eq!(s.agent_start, None);
        assert_eq!(s.observations.len(), 2);
    }

    #[test]
    fn malformed_or_mistyped_expositions_are_errors() {
        assert!(parse("cilium_drop_count_total{direction=\"INGRESS\" 5\n").is_err());
        let gauge = "# TYPE cilium_forward_count_total gauge\ncilium_forward_count_total{direction=\"EGRESS\"} 1\n";
        assert!(parse(gauge).unwrap_err().contains("a counter was expected"));
    }

    #[test]
    fn a_new_map_or_else_a_new_agent_process_is_a_restart() {
        let e = |start: f64, pin: Option<u64>| Epoch {
            agent_start: Some(start),
            map_pin: pin.map(|i| (1, i)),
        };
        assert!(
            !e(1.0, Some(7)).restarted_since(&e(2.0, Some(7))),
            "agent restarted, map kept"
        );
        assert!(
            e(1.0, Some(7)).restarted_since(&e(1.0, Some(8))),
            "map created anew"
        );
        assert!(
            e(1.0, None).restarted_since(&e(2.0, None)),
            "no pin: the process decides"
        );
        assert!(
            e(1.0, Some(7)).restarted_since(&e(2.0, None)),
            "pin gone: the process decides"
        );
        assert!(!e(1.0, None).restarted_since(&e(1.0, None)));
        let unknown = Epoch {
            agent_start: None,
            map_pin: None,
        };
        assert!(
            !unknown.restarted_since(&e(2.0, None)),
            "nothing to compare with"
        );
    }
}
