//! The figures of a run, computed from the recorded events and the samples of /proc taken
//! once a second, printed as text or JSON.

use super::record::{Events, Failure};
use super::verify::Verdict;
use serde::Serialize;
use std::collections::BTreeMap;

/// One sample of the run, taken every second by the driving thread.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Point {
    pub t_s: f64,
    /// Batches generated and not yet acknowledged, over all shippers.
    pub queued: i64,
    pub acked_samples: u64,
    /// Collector CPU seconds so far (over restarts).
    pub collector_cpu_s: f64,
    pub collector_rss: u64,
    pub load1: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Pct {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn pct(mut v: Vec<f64>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Pct {
        n: v.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

/// Counts of `times` (s) in bins of `width` s from `from` on: `(bin start, count)`.
pub fn histogram(times: &[f64], from: f64, width: f64) -> Vec<(f64, u64)> {
    let Some(last) = times.iter().cloned().reduce(f64::max) else {
        return Vec::new();
    };
    let bins = (((last - from) / width).floor().max(0.0) as usize) + 1;
    let mut h: Vec<(f64, u64)> = (0..bins).map(|i| (from + i as f64 * width, 0)).collect();
    for &t in times {
        let i = ((t - from) / width).floor().max(0.0) as usize;
        h[i.min(bins - 1)].1 += 1;
    }
    h
}

/// The most events in any window of `width` s.
pub fn peak(times: &[f64], width: f64) -> usize {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while t[i] - t[j] >= width {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

/// Least-squares slope of `(x, y)`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub shippers: usize,
    pub interval_s: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub series_total: usize,
    pub series_per_shipper_min: usize,
    pub series_per_shipper_mean: f64,
    pub series_per_shipper_max: usize,
    pub seed: u64,
    pub collector: String,
}

#[derive(Debug, Serialize)]
pub struct Steady {
    /// The window the figures below cover: from the warm-up's end to the end of the
    /// schedule, or to the collector's stop in restart mode.
    pub from_s: f64,
    pub to_s: f64,
    pub expected_samples_per_s: f64,
    pub sustained_samples_per_s: f64,
    pub pushes: usize,
    pub push_latency_ms: Pct,
    /// Acknowledgement time minus the batch's scheduled collection time.
    pub lag_ms: Pct,
    /// The same over the window's last interval.
    pub lag_last_interval_ms: Pct,
    pub queued_max: i64,
    pub queued_slope_per_min: f64,
    pub queue_grew: bool,
    pub keeps_up: bool,
    pub collector_cpu_cores: f64,
    pub collector_cpu_us_per_sample: f64,
    pub simulator_cpu_cores: f64,
}

#[derive(Debug, Serialize)]
pub struct Footprint {
    pub rss_idle_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_bytes_per_series: f64,
    pub rss_added_bytes_per_series: f64,
    pub samples_acked: u64,
    pub store_bytes: u64,
    pub store_bytes_per_sample: f64,
    pub store_bytes_after_clean_stop: Option<u64>,
    pub store_bytes_per_sample_after_clean_stop: Option<f64>,
    /// The data directory's entries and their bytes (Kappie: `main` is the sled database
    /// with the label index, series definitions and per-counter running totals,
    /// `staging` and `blocks` the sample chunks, `wal` the log).
    pub store_parts: BTreeMap<String, u64>,
    pub store_parts_after_clean_stop: Option<BTreeMap<String, u64>>,
    /// Time from SIGTERM at the end of the run to the collector's exit.
    pub clean_stop_ms: Option<f64>,
    /// The collector did not exit within `--stop-timeout` and was killed.
    pub clean_stop_killed: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct Errors {
    pub failed_calls_by_code: BTreeMap<String, u64>,
    pub rejected_batches: usize,
    pub redefinitions: u64,
    pub duplicates: usize,
    pub acked_by_hello: usize,
    pub coalesced_batches: u64,
    pub unacked_at_end: i64,
}

#[derive(Debug, Serialize)]
pub struct Restart {
    pub signal: String,
    pub stopped_at_s: f64,
    pub exit_ms: f64,
    pub down_for_ms: f64,
    /// From spawning the new process to its `/-/ready`.
    pub start_to_ready_ms: f64,
    /// From the stop to the last shipper's first acknowledgement after it.
    pub all_acked_after_s: Option<f64>,
    pub median_first_ack_after_s: Option<f64>,
    pub shippers_not_acked_again: usize,
    /// From the stop until the unacknowledged batches are back at the steady level.
    pub backlog_drained_after_s: Option<f64>,
    pub failed_calls: usize,
    /// Each shipper's first success after a failure, from the collector's readiness on.
    pub reconnects: usize,
    pub reconnect_bin_s: f64,
    pub reconnect_histogram: Vec<(f64, u64)>,
    pub peak_reconnects_per_100ms: usize,
    pub peak_reconnects_per_1s: usize,
    /// Failed calls over time, from the stop on.
    pub failed_call_histogram: Vec<(f64, u64)>,
    pub push_latency_after_ready_ms: Pct,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run: Run,
    pub load_before: [f64; 3],
    pub load1_during_min: f64,
    pub load1_during_max: f64,
    pub steady: Steady,
    pub footprint: Footprint,
    pub errors: Errors,
    pub restart: Option<Restart>,
    pub verification: Option<Verdict>,
    pub timeline: Vec<Point>,
}

pub fn errors(ev: &Events, coalesced: u64, unacked: i64) -> Errors {
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    for f in &ev.failures {
        let what = if f.hello { "hello" } else { "push" };
        *by_code.entry(format!("{what} {:?}", f.code)).or_default() += 1;
    }
    Errors {
        failed_calls_by_code: by_code,
        rejected_batches: ev.rejected.len(),
        redefinitions: ev.redefinitions,
        duplicates: ev
            .acks
            .iter()
            .filter(|a| a.duplicate && a.latency_us.is_some())
            .count(),
        acked_by_hello: ev.acks.iter().filter(|a| a.latency_us.is_none()).count(),
        coalesced_batches: coalesced,
        unacked_at_end: unacked,
    }
}

/// Restart figures; times in ms since the run's start.
pub struct RestartTimes {
    pub signal: String,
    pub stop_ms: f64,
    pub exited_ms: f64,
    pub spawn_ms: f64,
    pub ready_ms: f64,
}

pub fn restart(
    ev: &Events,
    shippers: usize,
    t: &RestartTimes,
    steady_queued_max: i64,
    timeline: &[Point],
) -> Restart {
    let mut first_ack: Vec<Option<u32>> = vec![None; shippers];
    for a in &ev.acks {
        if a.at_ms as f64 > t.stop_ms {
            let f = &mut first_ack[a.shipper as usize];
            *f = Some(f.map_or(a.at_ms, |x| x.min(a.at_ms)));
        }
    }
    let mut after: Vec<f64> = first_ack
        .iter()
        .flatten()
        .map(|&x| (x as f64 - t.stop_ms) / 1000.0)
        .collect();
    after.sort_by(f64::total_cmp);
    let not_acked = shippers - after.len();
    let reconnects: Vec<f64> = ev
        .recoveries
        .iter()
        .filter(|r| r.at_ms as f64 > t.stop_ms)
        .map(|r| (r.at_ms as f64 - t.ready_ms) / 1000.0)
        .collect();
    let span = reconnects.iter().cloned().fold(0.0, f64::max);
    let lo = reconnects.iter().cloned().fold(0.0, f64::min).floor();
    let bin = if span - lo <= 20.0 {
        0.5
    } else {
        ((span - lo) / 40.0).ceil()
    };
    let failed: Vec<f64> = ev
        .failures
        .iter()
        .filter(|f: &&Failure| f.at_ms as f64 >= t.stop_ms)
        .map(|f| (f.at_ms as f64 - t.stop_ms) / 1000.0)
        .collect();
    let fspan = failed.iter().cloned().fold(0.0, f64::max);
    let drained = timeline
        .iter()
        .filter(|p| p.t_s * 1000.0 > t.ready_ms)
        .find(|p| p.queued <= steady_queued_max.max(1))
        .map(|p| p.t_s - t.stop_ms / 1000.0);
    Restart {
        signal: t.signal.clone(),
        stopped_at_s: t.stop_ms / 1000.0,
        exit_ms: t.exited_ms - t.stop_ms,
        down_for_ms: t.spawn_ms - t.exited_ms,
        start_to_ready_ms: t.ready_ms - t.spawn_ms,
        all_acked_after_s: (not_acked == 0).then(|| after.last().copied()).flatten(),
        median_first_ack_after_s: after.get(after.len() / 2).copied(),
        shippers_not_acked_again: not_acked,
        backlog_drained_after_s: drained,
        failed_calls: failed.len(),
        reconnects: reconnects.len(),
        reconnect_bin_s: bin,
        reconnect_histogram: histogram(&reconnects, lo, bin),
        peak_reconnects_per_100ms: peak(&reconnects, 0.1),
        peak_reconnects_per_1s: peak(&reconnects, 1.0),
        failed_call_histogram: histogram(
            &failed,
            0.0,
            if fspan <= 20.0 {
                1.0
            } else {
                (fspan / 20.0).ceil()
            },
        ),
        push_latency_after_ready_ms: pct(ev
            .acks
            .iter()
            .filter(|a| a.at_ms as f64 > t.ready_ms)
            .filter_map(|a| a.latency_us)
            .map(|l| l as f64 / 1000.0)
            .collect()),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn bars(h: &[(f64, u64)], width: f64, out: &mut String) {
    let max = h.iter().map(|x| x.1).max().unwrap_or(1).max(1);
    for (start, n) in h {
        let bar = "#".repeat(((*n as f64 / max as f64) * 50.0).ceil() as usize);
        out.push_str(&format!(
            "    {:>7.1}..{:<7.1} s {:>6} {bar}\n",
            start,
            start + width,
            n
        ));
    }
}

impl Report {
    pub fn text(&self) -> String {
        let r = &self.run;
        let s = &self.steady;
        let f = &self.footprint;
        let mut o = String::new();
        o.push_str(&format!(
            "cluster-sim: {} shippers every {} s for {} s ({} series: {}..{} per shipper, mean {:.0}; {} connections; collector {})\n",
            r.shippers, r.interval_s, r.duration_s, r.series_total, r.series_per_shipper_min,
            r.series_per_shipper_max, r.series_per_shipper_mean, r.connections, r.collector
        ));
        o.push_str(&format!(
            "load average before {:?}; 1-min load during the run {:.2}..{:.2}\n",
            self.load_before, self.load1_during_min, self.load1_during_max
        ));
        o.push_str(&format!(
            "steady window {:.0}..{:.0} s: {:.0} samples/s acknowledged of {:.0} scheduled; {} pushes\n",
            s.from_s, s.to_s, s.sustained_samples_per_s, s.expected_samples_per_s, s.pushes
        ));
        let p = &s.push_latency_ms;
        o.push_str(&format!(
            "  push latency p50 {:.1} ms, p90 {:.1}, p99 {:.1}, max {:.1}\n",
            p.p50, p.p90, p.p99, p.max
        ));
        let l = &s.lag_ms;
        o.push_str(&format!(
            "  lag behind schedule p50 {:.1} ms, p99 {:.1}, max {:.1}; unacknowledged batches max {} (slope {:+.1}/min, {})\n",
            l.p50, l.p99, l.max, s.queued_max, s.queued_slope_per_min,
            if s.queue_grew { "GROWING" } else { "not growing" }
        ));
        o.push_str(&format!(
            "  keeps up: {} (backlog not growing and every batch of the window's last interval acknowledged within the interval: lag max {:.0} ms there)\n",
            if s.keeps_up { "yes" } else { "NO" },
            s.lag_last_interval_ms.max
        ));
        o.push_str(&format!(
            "  collector CPU {:.3} cores = {:.2} us/sample; simulator CPU {:.3} cores\n",
            s.collector_cpu_cores, s.collector_cpu_us_per_sample, s.simulator_cpu_cores
        ));
        o.push_str(&format!(
            "collector RSS idle {:.1} MiB, peak {:.1}, end {:.1}: {:.0} B per active series ({:.0} B above idle)\n",
            mib(f.rss_idle_bytes), mib(f.rss_peak_bytes), mib(f.rss_end_bytes),
            f.rss_bytes_per_series, f.rss_added_bytes_per_series
        ));
        o.push_str(&format!(
            "store {:.1} MiB for {} samples = {:.2} B/sample running",
            mib(f.store_bytes),
            f.samples_acked,
            f.store_bytes_per_sample
        ));
        if let (Some(b), Some(bps)) = (
            f.store_bytes_after_clean_stop,
            f.store_bytes_per_sample_after_clean_stop,
        ) {
            o.push_str(&format!(
                ", {:.1} MiB = {bps:.2} B/sample after a clean stop",
                mib(b)
            ));
        }
        o.push('\n');
        let parts = |p: &BTreeMap<String, u64>| {
            p.iter()
                .map(|(k, v)| format!("{k} {:.1} MiB", mib(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        o.push_str(&format!("  running: {}\n", parts(&f.store_parts)));
        if let Some(p) = &f.store_parts_after_clean_stop {
            o.push_str(&format!("  after a clean stop: {}\n", parts(p)));
        }
        if let (Some(ms), Some(killed)) = (f.clean_stop_ms, f.clean_stop_killed) {
            o.push_str(&format!(
                "clean stop: SIGTERM to exit {:.0} ms{}\n",
                ms,
                if killed {
                    " (did not exit: KILLED at the stop timeout)"
                } else {
                    ""
                }
            ));
        }
        let e = &self.errors;
        o.push_str(&format!(
            "calls failed {:?}; batches refused {}, definitions asked again {}, DUPLICATE answers {}, found applied by Hello {}, merged {}, unacknowledged at the end {}\n",
            e.failed_calls_by_code, e.rejected_batches, e.redefinitions, e.duplicates,
            e.acked_by_hello, e.coalesced_batches, e.unacked_at_end
        ));
        if let Some(x) = &self.restart {
            o.push_str(&format!(
                "restart: SIG{} at {:.1} s, exited in {:.0} ms, ready {:.0} ms after start; every shipper acknowledged again after {} (median {}); backlog back to steady after {}\n",
                x.signal, x.stopped_at_s, x.exit_ms, x.start_to_ready_ms,
                x.all_acked_after_s.map_or(format!("NEVER ({} shippers not)", x.shippers_not_acked_again), |v| format!("{v:.1} s")),
                x.median_first_ack_after_s.map_or("-".into(), |v| format!("{v:.1} s")),
                x.backlog_drained_after_s.map_or("never".into(), |v| format!("{v:.1} s")),
            ));
            o.push_str(&format!(
                "  {} failed calls while it was away; {} reconnects, at most {} in any 100 ms and {} in any second; from readiness:\n",
                x.failed_calls, x.reconnects, x.peak_reconnects_per_100ms, x.peak_reconnects_per_1s
            ));
            bars(&x.reconnect_histogram, x.reconnect_bin_s, &mut o);
            let p = &x.push_latency_after_ready_ms;
            o.push_str(&format!(
                "  push latency after readiness p50 {:.1} ms, p99 {:.1}, max {:.1}\n",
                p.p50, p.p99, p.max
            ));
        }
        match &self.verification {
            Some(v) => {
                o.push_str(&format!(
                    "verification: {}\n",
                    if v.ok {
                        "every count the shippers sent is stored, once"
                    } else {
                        "MISMATCH"
                    }
                ));
                for m in &v.metrics {
                    o.push_str(&format!(
                        "  {:<30} series {:>8}/{:<8} sum sent {:>20} stored {:>20} nodes off {} series compared {} off {}\n",
                        m.metric, m.series_stored, m.series_sent, m.sum_sent, m.sum_stored,
                        m.nodes_off, m.series_compared, m.series_off
                    ));
                }
                for x in &v.examples {
                    o.push_str(&format!("  ! {x}\n"));
                }
            }
            None => o.push_str("verification: skipped\n"),
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let p = pct((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (51.0, 99.0, 100.0));
    }

    #[test]
    fn peak_counts_the_busiest_window() {
        assert_eq!(peak(&[0.0, 0.05, 0.09, 0.5, 0.55], 0.1), 3);
        assert_eq!(peak(&[], 0.1), 0);
    }

    #[test]
    fn histogram_bins_from_the_start() {
        assert_eq!(
            histogram(&[0.1, 0.6, 0.7, 2.2], 0.0, 1.0),
            vec![(0.0, 3), (1.0, 0), (2.0, 1)]
        );
    }

    #[test]
    fn slope_of_a_line() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-12);
    }
}
