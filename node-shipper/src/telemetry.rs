//! The shipper's own metrics, health and readiness: what the collection loop reports, kept
//! here under one lock and rendered in the Prometheus text format by [`Telemetry::render`].
//! Every self-metric is named `kappie_shipper_*`; units are seconds and bytes.
//!
//! The eBPF programs' run statistics are read from the kernel at scrape time (through the
//! programs' pins), the rest is what the loop last reported.

use crate::source::SourceError;
use crate::sources::ebpf::EbpfPrograms;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Healthy while the last collection is at most this many intervals old.
const HEALTHY_INTERVALS: u32 = 3;

/// One source's share of a collection.
#[derive(Debug, Clone, Copy, Default)]
struct SourceStats {
    last_duration: Duration,
    duration_total: Duration,
    series: usize,
    errors: u64,
    /// In an outage (its last collection failed with [`SourceError::Unavailable`]).
    unavailable: bool,
}

/// Where the collection loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loop {
    Starting,
    /// Running since; the reference for health until the first collection.
    Running(Instant),
    Stopped,
}

#[derive(Debug)]
struct State {
    phase: Loop,
    sources: BTreeMap<&'static str, SourceStats>,
    collections: u64,
    last_collection: Option<(Instant, SystemTime)>,
    queue_batches: usize,
    queue_bytes: usize,
    pushes_ok: u64,
    pushes_rejected: u64,
    pushes_failed: u64,
    last_acknowledged: Option<u64>,
    last_push_ok: Option<SystemTime>,
    ebpf: EbpfPrograms,
    /// The dataplane chosen and why (`kappie_shipper_dataplane`).
    dataplane: Option<(&'static str, &'static str)>,
}

/// The shipper's self-telemetry, shared by the collection loop (which reports) and the HTTP
/// server (which reads).
#[derive(Debug)]
pub struct Telemetry {
    interval: Duration,
    /// `version`, `node_name`, `cluster` of `kappie_shipper_info`.
    info: [(&'static str, String); 3],
    state: Mutex<State>,
}

impl Telemetry {
    pub fn new(interval: Duration, node_name: &str, cluster: &str) -> Self {
        Telemetry {
            interval,
            info: [
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("node_name", node_name.to_owned()),
                ("cluster", cluster.to_owned()),
            ],
            state: Mutex::new(State {
                phase: Loop::Starting,
                sources: BTreeMap::new(),
                collections: 0,
                last_collection: None,
                queue_batches: 0,
                queue_bytes: 0,
                pushes_ok: 0,
                pushes_rejected: 0,
                pushes_failed: 0,
                last_acknowledged: None,
                last_push_ok: None,
                ebpf: EbpfPrograms::default(),
                dataplane: None,
            }),
        }
    }

    /// A panic elsewhere while holding the lock leaves numbers, not broken invariants.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The enabled sources (so each has its series before its first collection) and what
    /// the eBPF source attached.
    pub fn sources(&self, names: &[&'static str], ebpf: Option<EbpfPrograms>) {
        let mut st = self.state();
        for n in names {
            st.sources.entry(n).or_default();
        }
        st.ebpf = ebpf.unwrap_or_default();
    }

    pub fn loop_started(&self) {
        self.state().phase = Loop::Running(Instant::now());
    }

    pub fn loop_stopped(&self) {
        self.state().phase = Loop::Stopped;
    }

    /// One source's part of a collection: how long it took and how many series it gave.
    pub fn source_collected(&self, source: &'static str, took: Duration, series: usize) {
        let mut st = self.state();
        let s = st.sources.entry(source).or_default();
        s.last_duration = took;
        s.duration_total += took;
        s.series = series;
    }

    /// The dataplane the shipper runs on and why it was chosen (a short snake_case word).
    pub fn dataplane(&self, dataplane: &'static str, reason: &'static str) {
        self.state().dataplane = Some((dataplane, reason));
    }

    /// Logs a source's failure and counts it: the one place that does both. An outage
    /// ([`SourceError::Unavailable`]) is logged as a warning once, when it begins; every
    /// failed collection is counted.
    pub fn source_failed(&self, source: &'static str, error: &SourceError) {
        let mut st = self.state();
        let s = st.sources.entry(source).or_default();
        s.errors += 1;
        match error {
            SourceError::Unavailable { .. } => {
                if !s.unavailable {
                    s.unavailable = true;
                    drop(st);
                    tracing::warn!(source, error = %error, "source unavailable; no data from it until it is back (logged once; kappie_shipper_collection_errors_total counts each collection)");
                }
            }
            _ => {
                drop(st);
                tracing::error!(source, error = %error, "source failed; other sources go on");
            }
        }
    }

    /// A source collected without error: ends its outage, if it was in one.
    pub fn source_ok(&self, source: &'static str) {
        let mut st = self.state();
        let s = st.sources.entry(source).or_default();
        if s.unavailable {
            s.unavailable = false;
            drop(st);
            tracing::info!(source, "source available again");
        }
    }

    /// A whole collection is done.
    pub fn collected(&self) {
        let mut st = self.state();
        st.collections += 1;
        st.last_collection = Some((Instant::now(), SystemTime::now()));
    }

    pub fn queue(&self, batches: usize, bytes: usize) {
        let mut st = self.state();
        st.queue_batches = batches;
        st.queue_bytes = bytes;
    }

    /// The collector acknowledged batch `sequence` (applied now or before).
    pub fn push_acknowledged(&self, sequence: Option<u64>) {
        let mut st = self.state();
        st.pushes_ok += 1;
        if sequence.is_some() {
            st.last_acknowledged = sequence;
        }
        st.last_push_ok = Some(SystemTime::now());
    }

    pub fn push_rejected(&self) {
        self.state().pushes_rejected += 1;
    }

    pub fn push_failed(&self) {
        self.state().pushes_failed += 1;
    }

    /// `Ok` while the collection loop runs and has collected within the last three
    /// intervals; otherwise why not.
    pub fn health(&self) -> Result<(), String> {
        self.health_at(Instant::now())
    }

    fn health_at(&self, now: Instant) -> Result<(), String> {
        let st = self.state();
        let since = match (st.phase, st.last_collection) {
            (Loop::Starting, _) => return Err("starting: the collection loop has not begun".into()),
            (Loop::Stopped, _) => return Err("the collection loop has stopped".into()),
            (Loop::Running(_), Some((at, _))) => at,
            (Loop::Running(started), None) => started,
        };
        let limit = self.interval * HEALTHY_INTERVALS;
        let age = now.saturating_duration_since(since);
        if age > limit {
            return Err(format!(
                "no collection for {:.1} s, more than {HEALTHY_INTERVALS} intervals ({:.1} s); \
                 the loop is stuck (a push that does not return?)",
                age.as_secs_f64(),
                limit.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Whether the collector has acknowledged a push of this process.
    pub fn ready(&self) -> bool {
        self.state().pushes_ok > 0
    }

    /// Every self-metric in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        render(&self.families())
    }

    /// Every self-metric as observations the shipper pushes with its data (the `self`
    /// source), so the collector's dashboards see them: `kappie_shipper_info` without its
    /// node and cluster labels, which every pushed series gets anyway.
    pub fn observations(&self) -> Vec<crate::source::Observation> {
        use crate::source::Observation;
        let mut out = Vec::new();
        for f in self.families() {
            for (labels, value) in f.samples {
                let labels: Vec<(&'static str, String)> = labels
                    .into_iter()
                    .filter(|(k, v)| {
                        !(f.name == "kappie_shipper_info" && (*k == "node_name" || *k == "cluster"))
                            && !v.is_empty()
                    })
                    .collect();
                out.push(match f.kind {
                    "counter" => Observation::counter(f.name, labels, value),
                    _ => Observation::gauge(f.name, labels, value),
                });
            }
        }
        out
    }

    /// Every self-metric, typed.
    fn families(&self) -> Vec<Fam> {
        let (ebpf, mut out) = {
            let st = self.state();
            (st.ebpf.clone(), self.loop_families(&st))
        };
        // Syscalls, outside the lock.
        let runs = ebpf.runs();
        let mut m = Family::new(&mut out);
        m.head(
            "kappie_shipper_ebpf_program_attached",
            "gauge",
            "1 for each eBPF program attachment: program, interface (tc programs) and hook \
             (tcx, clsact, tp_btf or tracepoint).",
        );
        for a in ebpf.attachments() {
            m.sample(
                &[
                    ("program", a.program),
                    ("interface", a.interface.as_deref().unwrap_or("")),
                    ("hook", a.hook),
                ],
                1.0,
            );
        }
        const STATS: &str = "The kernel fills it only while kernel.bpf_stats_enabled=1 \
                             (or a BPF_ENABLE_STATS descriptor is open); otherwise it stays 0.";
        m.head(
            "kappie_shipper_ebpf_program_runs_total",
            "counter",
            &format!("Runs of the attached eBPF program (bpf_prog_info run_cnt). {STATS}"),
        );
        for r in &runs {
            m.sample(&[("program", r.program)], r.run_count as f64);
        }
        m.head(
            "kappie_shipper_ebpf_program_run_seconds_total",
            "counter",
            &format!("Time the attached eBPF program ran (bpf_prog_info run_time_ns). {STATS}"),
        );
        for r in &runs {
            m.sample(&[("program", r.program)], r.run_time.as_secs_f64());
        }
        out
    }

    fn loop_families(&self, st: &State) -> Vec<Fam> {
        let mut out = Vec::new();
        let mut m = Family::new(&mut out);
        m.head(
            "kappie_shipper_info",
            "gauge",
            "Always 1; the shipper's version, node and cluster as labels.",
        );
        let info: Vec<(&str, &str)> = self.info.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.sample(&info, 1.0);
        m.head(
            "kappie_shipper_dataplane",
            "gauge",
            "Always 1; where forward and drop counts come from (linux, cilium or windows) and \
             why it was chosen (configured, windows_build, cilium_bpf_maps, \
             cilium_metrics_endpoint or no_cilium_agent).",
        );
        if let Some((dataplane, reason)) = st.dataplane {
            m.sample(&[("dataplane", dataplane), ("reason", reason)], 1.0);
        }
        m.head(
            "kappie_shipper_collections_total",
            "counter",
            "Collections run (one per interval while the loop is not held up by a push).",
        );
        m.sample(&[], st.collections as f64);
        m.head(
            "kappie_shipper_last_collection_timestamp_seconds",
            "gauge",
            "When the last collection ended, in seconds since the epoch.",
        );
        if let Some((_, at)) = st.last_collection {
            m.sample(&[], epoch_seconds(at));
        }
        m.head(
            "kappie_shipper_last_collection_duration_seconds",
            "gauge",
            "How long the source took in the last collection.",
        );
        for (s, v) in &st.sources {
            m.sample(&[("source", s)], v.last_duration.as_secs_f64());
        }
        m.head(
            "kappie_shipper_collection_duration_seconds_total",
            "counter",
            "Time spent collecting from the source, summed over all collections.",
        );
        for (s, v) in &st.sources {
            m.sample(&[("source", s)], v.duration_total.as_secs_f64());
        }
        m.head(
            "kappie_shipper_series",
            "gauge",
            "Series the source gave in the last collection.",
        );
        for (s, v) in &st.sources {
            m.sample(&[("source", s)], v.series as f64);
        }
        m.head(
            "kappie_shipper_collection_errors_total",
            "counter",
            "Collections in which the source failed (the others went on).",
        );
        for (s, v) in &st.sources {
            m.sample(&[("source", s)], v.errors as f64);
        }
        m.head(
            "kappie_shipper_queue_batches",
            "gauge",
            "Batches waiting for the collector's acknowledgement.",
        );
        m.sample(&[], st.queue_batches as f64);
        m.head(
            "kappie_shipper_queue_bytes",
            "gauge",
            "Approximate memory of the batches waiting (budget: --queue-max-bytes).",
        );
        m.sample(&[], st.queue_bytes as f64);
        m.head(
            "kappie_shipper_pushes_total",
            "counter",
            "Pushes to the collector by result: ok (acknowledged), rejected (refused for \
             good; the batch is dropped) or failed (not delivered, retried; a failed \
             session start counts here too).",
        );
        for (result, n) in [
            ("ok", st.pushes_ok),
            ("rejected", st.pushes_rejected),
            ("failed", st.pushes_failed),
        ] {
            m.sample(&[("result", result)], n as f64);
        }
        m.head(
            "kappie_shipper_last_acknowledged_sequence",
            "gauge",
            "Sequence number of the last batch the collector acknowledged.",
        );
        if let Some(seq) = st.last_acknowledged {
            m.sample(&[], seq as f64);
        }
        m.head(
            "kappie_shipper_last_successful_push_timestamp_seconds",
            "gauge",
            "When the collector last acknowledged a push, in seconds since the epoch.",
        );
        if let Some(at) = st.last_push_ok {
            m.sample(&[], epoch_seconds(at));
        }
        out
    }
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One metric family: name, type, help and samples (labels, value).
struct Fam {
    name: &'static str,
    kind: &'static str,
    help: String,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// The families in the Prometheus text exposition format.
fn render(families: &[Fam]) -> String {
    let mut out = String::new();
    for f in families {
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(
            out,
            "# HELP {} {help}\n# TYPE {} {}",
            f.name, f.name, f.kind
        );
        for (labels, value) in &f.samples {
            let _ = write!(out, "{}", f.name);
            if !labels.is_empty() {
                let _ = write!(out, "{{");
                for (i, (k, v)) in labels.iter().enumerate() {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(out, "{sep}{k}=\"{v}\"");
                }
                let _ = write!(out, "}}");
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

/// Builds metric families: a head, then samples of the last head.
struct Family<'a> {
    out: &'a mut Vec<Fam>,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut Vec<Fam>) -> Self {
        Family { out }
    }

    fn head(&mut self, name: &'static str, kind: &'static str, help: &str) {
        self.out.push(Fam {
            name,
            kind,
            help: help.to_owned(),
            samples: Vec::new(),
        });
    }

    fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) {
        if let Some(f) = self.out.last_mut() {
            f.samples.push((
                labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
                value,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, in the order served.
    const FAMILIES: [&str; 16] = [
        "kappie_shipper_info",
        "kappie_shipper_dataplane",
        "kappie_shipper_collections_total",
        "kappie_shipper_last_collection_timestamp_seconds",
        "kappie_shipper_last_collection_duration_seconds",
        "kappie_shipper_collection_duration_seconds_total",
        "kappie_shipper_series",
        "kappie_shipper_collection_errors_total",
        "kappie_shipper_queue_batches",
        "kappie_shipper_queue_bytes",
        "kappie_shipper_pushes_total",
        "kappie_shipper_last_acknowledged_sequence",
        "kappie_shipper_last_successful_push_timestamp_seconds",
        "kappie_shipper_ebpf_program_attached",
        "kappie_shipper_ebpf_program_runs_total",
        "kappie_shipper_ebpf_program_run_seconds_total",
    ];

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_family_has_help_and_type_and_label_values_are_escaped() {
        let t = Telemetry::new(Duration::from_secs(10), "node \"a\"", "c\\1");
        t.sources(&["netstat"], None);
        t.source_collected("netstat", Duration::from_millis(250), 42);
        t.collected();
        let text = t.render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for name in &families {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has HELP");
        }
        assert_eq!(families, FAMILIES);
        assert!(text.contains(
            "kappie_shipper_info{version=\"0.1.0\",node_name=\"node \\\"a\\\"\",cluster=\"c\\\\1\"} 1"
        ));
        assert_eq!(
            sample(&text, "kappie_shipper_series{source=\"netstat\"}"),
            Some("42")
        );
        assert_eq!(
            sample(
                &text,
                "kappie_shipper_last_collection_duration_seconds{source=\"netstat\"}"
            ),
            Some("0.25")
        );
        assert_eq!(
            sample(
                &text,
                "kappie_shipper_collection_errors_total{source=\"netstat\"}"
            ),
            Some("0")
        );
    }

    #[test]
    fn dataplane_is_one_series_with_its_reason() {
        let t = Telemetry::new(Duration::from_secs(10), "n", "c");
        assert!(!t.render().contains("kappie_shipper_dataplane{"));
        t.dataplane("cilium", "cilium_bpf_maps");
        assert_eq!(
            sample(
                &t.render(),
                "kappie_shipper_dataplane{dataplane=\"cilium\",reason=\"cilium_bpf_maps\"}"
            ),
            Some("1")
        );
    }

    #[test]
    fn an_outage_is_counted_every_time_and_ended_by_a_good_collection() {
        let t = Telemetry::new(Duration::from_secs(10), "n", "c");
        let down = SourceError::Unavailable {
            what: "agent".into(),
            err: "connection refused".into(),
        };
        for _ in 0..3 {
            t.source_failed("cilium", &down);
        }
        assert!(t.state().sources["cilium"].unavailable);
        t.source_ok("cilium");
        assert!(!t.state().sources["cilium"].unavailable);
        assert_eq!(
            sample(
                &t.render(),
                "kappie_shipper_collection_errors_total{source=\"cilium\"}"
            ),
            Some("3")
        );
    }

    #[test]
    fn ready_after_the_first_acknowledged_push_only() {
        let t = Telemetry::new(Duration::from_secs(10), "n", "c");
        t.push_failed();
        t.push_rejected();
        assert!(!t.ready());
        t.push_acknowledged(Some(7));
        assert!(t.ready());
        let text = t.render();
        assert_eq!(
            sample(&text, "kappie_shipper_last_acknowledged_sequence"),
            Some("7")
        );
        assert_eq!(
            sample(&text, "kappie_shipper_pushes_total{result=\"failed\"}"),
            Some("1")
        );
    }

    #[test]
    fn healthy_only_while_the_loop_runs_and_collects() {
        let t = Telemetry::new(Duration::from_secs(10), "n", "c");
        assert!(t.health().unwrap_err().contains("starting"));
        t.loop_started();
        let later = |s| Instant::now() + Duration::from_secs(s);
        assert_eq!(
            t.health_at(later(29)),
            Ok(()),
            "no collection yet, loop just begun"
        );
        assert!(t
            .health_at(later(31))
            .unwrap_err()
            .contains("no collection for"));
        t.collected();
        assert_eq!(t.health(), Ok(()));
        assert!(t
            .health_at(later(31))
            .unwrap_err()
            .contains("no collection for"));
        t.loop_stopped();
        assert!(t.health().unwrap_err().contains("stopped"));
    }
}
