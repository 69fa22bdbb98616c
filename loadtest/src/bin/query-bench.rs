//! PromQL latency of a dashboard-like query set, Kappie next to Prometheus 2.42 on the same
//! data in the same run.
//!
//! Two data shapes (`--shape`):
//! - `requests`: `--series` counters (`kb_requests_total{job, instance, code}`) plus an info
//!   metric, one sample every 15 s, each counter growing linearly; the shape of the figures
//!   before 2026-12-02.
//! - `kappie`: `--nodes` simulated nodes of cluster-sim ([`kappie_loadtest::cluster::node`]:
//!   the twelve metrics of SPEC §1 with their labels, 400 to 640 series a node, counters
//!   moving like real traffic with bursts and idle drop reasons), one sample every 10 s
//!   (the shipper's default interval); queried with the panels of `dashboards/*.json`
//!   (`$cluster`, `$node` and the like at Grafana's "All", `.*`) and the issue 15 mix.
//!
//! The samples of `--minutes` are remote-written into a Kappie collector (`--collector`,
//! started here on loopback with its own data directory) and into a Prometheus started
//! here; then every query runs `--runs` times against each, alternating, through the HTTP
//! API. It prints median and p99 latency per query, the ratio of the medians and their
//! geometric mean, the answering process's CPU time per query (`/proc/<pid>/stat`; on a loaded machine wall time measures the scheduler as much as the work),
//! and whether the answers agree (same series, values equal to 1e-9 relative).
//!
//! Needs `prometheus` on the PATH (`apt-get install prometheus`) and the collector binary
//! (`cargo build --release -p kappie-collector`).

use anyhow::bail;
use clap::Parser;
use kappie_loadtest::cluster::node::Node;
use kappie_loadtest::{now_ms, work_dir, Collector};
use kappie_proto::prometheus as pb;
use kappie_testkit::prometheus::{self as prom, Prometheus};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataShape {
    Requests,
    Kappie,
}

#[derive(Parser)]
struct Args {
    /// The data set and its query mix.
    #[arg(long, value_enum, default_value = "requests")]
    shape: DataShape,
    /// Nodes of the `kappie` shape (about 520 series each).
    #[arg(long, default_value_t = 40)]
    nodes: usize,
    /// Counter series of the `requests` shape (10 jobs x N/100 instances x 10 codes).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Minutes of data, ending now.
    #[arg(long, default_value_t = 70)]
    minutes: i64,
    /// The data ends this many minutes ago; when that puts every chunk window in the past
    /// (75 or more), the benchmark waits until Kappie has compacted them and so measures
    /// queries over compacted pages.
    #[arg(long, default_value_t = 0)]
    ago_minutes: i64,
    /// Runs of each query against each system.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Run only the queries whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// The collector binary.
    #[arg(long, default_value = "target/release/kappie-collector")]
    collector: String,
}

/// A query of the mix: its name, its text, and whether it is a range query (the last hour
/// at a 60 s step, like a Grafana panel) or an instant query at the end of the data.
type Query = (&'static str, &'static str, bool);

/// The `requests` shape's mix.
const REQUESTS_QUERIES: &[Query] = &[
    (
        "sum by (job) (rate[5m]), 1 h range",
        "sum by (job) (rate(kb_requests_total[5m]))",
        true,
    ),
    (
        "sum by (job) (rate[1h]), instant",
        "sum by (job) (rate(kb_requests_total[1h]))",
        false,
    ),
    (
        "topk(10, sum by (instance) (rate[5m])), 1 h range",
        "topk(10, sum by (instance) (rate(kb_requests_total[5m])))",
        true,
    ),
    (
        "rate / on(job) group_left(team) info, 1 h range",
        "sum by (job, code) (rate(kb_requests_total[5m])) * on(job) group_left(team) kb_info",
        true,
    ),
    (
        "label_replace(sum by (instance) (rate[5m])), 1 h range",
        "label_replace(sum by (instance) (rate(kb_requests_total[5m])), \"host\", \"$1\", \"instance\", \"(.*):.*\")",
        true,
    ),
];

/// The `kappie` shape's mix: panels of `dashboards/*.json` with every variable at "All"
/// (`.*`), `$__rate_interval` as 2m and `$__range` as 1h, plus the comparison, average and
/// subquery of issue 15.
const KAPPIE_QUERIES: &[Query] = &[
    (
        "overview: sum by (node, direction) (rate(forward_bytes[2m]))",
        r#"sum by (node_name, direction) (rate(kappie_forward_bytes{cluster=~".*",node_name=~".*"}[2m]))"#,
        true,
    ),
    (
        "drops: sum by (reason, direction) (rate(drop_count{reason=~\".*\"}[2m]))",
        r#"sum by (reason, direction) (rate(kappie_drop_count{cluster=~".*",node_name=~".*",reason=~".*"}[2m]))"#,
        true,
    ),
    (
        "overview: topk(10, sum by (reason) (increase(drop_count[1h]))), instant",
        r#"topk(10, sum by (reason) (increase(kappie_drop_count{cluster=~".*",node_name=~".*"}[1h])))"#,
        false,
    ),
    (
        "topk(10, sum by (reason) (increase(drop_count[5m])))",
        r#"topk(10, sum by (reason) (increase(kappie_drop_count{cluster=~".*",node_name=~".*"}[5m])))"#,
        true,
    ),
    (
        "sum by (node) (increase(tcp_flag_counters{flag=\"SYN\"}[5m]))",
        r#"sum by (node_name) (increase(kappie_tcp_flag_counters{flag="SYN",cluster=~".*",node_name=~".*"}[5m]))"#,
        true,
    ),
    (
        "avg by (state) (tcp_state)",
        r#"avg by (state) (kappie_tcp_state{cluster=~".*",node_name=~".*"})"#,
        true,
    ),
    (
        "interfaces: sum by (node, if, stat) (rate(interface_stats{stat=~\"rx_dropped|tx_dropped\"}[2m]))",
        r#"sum by (node_name, interface_name, statistic_name) (rate(kappie_interface_stats{statistic_name=~"rx_dropped|tx_dropped",cluster=~".*",node_name=~".*",interface_name=~".*"}[2m]))"#,
        true,
    ),
    (
        "interfaces: sum by (node, if) (rate(interface_stats{stat=\"rx_bytes\"}[2m]))",
        r#"sum by (node_name, interface_name) (rate(kappie_interface_stats{statistic_name="rx_bytes",cluster=~".*",node_name=~".*",interface_name=~".*"}[2m]))"#,
        true,
    ),
    (
        "tcp: sum by (stat) (rate(tcp_connection_stats{stat=~\"RetransSegs|TCPTimeouts\"}[2m]))",
        r#"sum by (statistic_name) (rate(kappie_tcp_connection_stats{statistic_name=~"RetransSegs|TCPTimeouts",cluster=~".*",node_name=~".*"}[2m]))"#,
        true,
    ),
    (
        "tcp: topk(10, sum by (address, port) (tcp_connection_remote{address!=\"other\"}))",
        r#"topk(10, sum by (address, port) (kappie_tcp_connection_remote{address!="other",cluster=~".*",node_name=~".*"}))"#,
        true,
    ),
    (
        "sum by (node) (rate(drop_count[5m])) > 1",
        r#"sum by (node_name) (rate(kappie_drop_count{cluster=~".*",node_name=~".*"}[5m])) > 1"#,
        true,
    ),
    (
        "max_over_time(sum by (node) (rate(forward_bytes[2m]))[30m:1m])",
        r#"max_over_time(sum by (node_name) (rate(kappie_forward_bytes{cluster=~".*",node_name=~".*"}[2m]))[30m:1m])"#,
        true,
    ),
];

/// CPU time (user + system) of process `pid` so far, in milliseconds: it includes threads
/// that have exited, at the clock tick's resolution (10 ms a reading; summed over the runs,
/// the error is a few tenths of a millisecond a query).
fn cpu_ms(pid: u32) -> f64 {
    kappie_loadtest::cluster::process::cpu_seconds(pid).unwrap_or(0.0) * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The samples of every series, produced slice after slice in time order.
trait Source {
    /// The samples in `[from, to)` of every series.
    fn slice(&mut self, from: i64, to: i64) -> Vec<pb::TimeSeries>;
    fn series(&self) -> usize;
}

/// The `requests` shape: `kb_requests_total` growing linearly every 15 s, and `kb_info`.
struct Requests {
    t0: i64,
    jobs: usize,
    instances: usize,
    codes: usize,
}

const REQUESTS_STEP_MS: i64 = 15_000;

impl Source for Requests {
    fn slice(&mut self, from: i64, to: i64) -> Vec<pb::TimeSeries> {
        let t0 = self.t0;
        let times = || {
            let mut t = from + (from - t0).rem_euclid(REQUESTS_STEP_MS);
            std::iter::from_fn(move || {
                let now = t;
                t += REQUESTS_STEP_MS;
                (now < to).then_some(now)
            })
        };
        let mut batch = Vec::new();
        for j in 0..self.jobs {
            for i in 0..self.instances {
                for c in 0..self.codes {
                    let rate = ((j * 7 + i * 3 + c) % 13 + 1) as f64;
                    let samples: Vec<(i64, f64)> = times()
                        .map(|t| (t, ((t - t0) / REQUESTS_STEP_MS) as f64 * rate))
                        .collect();
                    batch.push(prom::series(
                        &[
                            ("__name__", "kb_requests_total"),
                            ("job", &format!("job-{j}")),
                            ("instance", &format!("10.0.{}.{}:9100", i / 250, i % 250)),
                            ("code", &format!("{}", 200 + c)),
                        ],
                        &samples,
                    ));
                }
            }
            let info: Vec<(i64, f64)> = times().map(|t| (t, 1.0)).collect();
            batch.push(prom::series(
                &[
                    ("__name__", "kb_info"),
                    ("job", &format!("job-{j}")),
                    ("team", &format!("team-{}", j % 3)),
                ],
                &info,
            ));
        }
        batch
    }

    fn series(&self) -> usize {
        self.jobs * (self.instances * self.codes + 1)
    }
}

/// The `kappie` shape: cluster-sim's nodes, one collection every 10 s. A node stamps its
/// samples of one collection with one time, the step plus a delay of its own (0..=9 ms).
struct KappieNodes {
    t0: i64,
    nodes: Vec<Node>,
    /// Sorted label pairs (`__name__` included) per node and series.
    labels: Vec<Vec<Vec<(String, String)>>>,
    /// The next collection's index.
    next: i64,
}

const KAPPIE_STEP_MS: i64 = 10_000;

impl KappieNodes {
    fn new(t0: i64, n: usize) -> Self {
        let nodes: Vec<Node> = (0..n).map(|i| Node::new(15, i, "bench")).collect();
        let labels = nodes
            .iter()
            .map(|node| {
                let layout = node.layout();
                node.values()
                    .enumerate()
                    .map(|(i, (metric, _))| {
                        let mut l: Vec<(String, String)> = layout
                            .labels(i)
                            .into_iter()
                            .map(|(n, v)| (n.to_owned(), v))
                            .collect();
                        l.push(("__name__".into(), metric.name().into()));
                        l.sort();
                        l
                    })
                    .collect()
            })
            .collect();
        KappieNodes {
            t0,
            nodes,
            labels,
            next: 0,
        }
    }
}

impl Source for KappieNodes {
    fn slice(&mut self, from: i64, to: i64) -> Vec<pb::TimeSeries> {
        let mut per: Vec<Vec<Vec<(i64, f64)>>> = self
            .nodes
            .iter()
            .map(|n| vec![Vec::new(); n.series()])
            .collect();
        let (mut deltas, mut gauges) = (Vec::new(), Vec::new());
        while self.t0 + self.next * KAPPIE_STEP_MS < to {
            let step = self.t0 + self.next * KAPPIE_STEP_MS;
            debug_assert!(step >= from);
            for (k, node) in self.nodes.iter_mut().enumerate() {
                node.step(KAPPIE_STEP_MS as f64 / 1000.0, &mut deltas, &mut gauges);
                deltas.clear();
                gauges.clear();
                let t = step + (k as i64 * 7 + self.next * 3) % 10;
                for (i, (_, v)) in node.values().enumerate() {
                    per[k][i].push((t, v));
                }
            }
            self.next += 1;
        }
        let mut batch = Vec::new();
        for (k, series) in per.into_iter().enumerate() {
            for (i, samples) in series.into_iter().enumerate() {
                let l: Vec<(&str, &str)> = self.labels[k][i]
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                batch.push(prom::series(&l, &samples));
            }
        }
        batch
    }

    fn series(&self) -> usize {
        self.nodes.iter().map(Node::series).sum()
    }
}

/// A query's answer keyed by label set: `(t, value)` per series (one point for an instant
/// vector).
fn answer(body: &serde_json::Value) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out = BTreeMap::new();
    for r in body["data"]["result"].as_array().into_iter().flatten() {
        let pts: Vec<&serde_json::Value> = match r["values"].as_array() {
            Some(v) => v.iter().collect(),
            None => vec![&r["value"]],
        };
        let num = |x: &serde_json::Value| match x.as_str() {
            Some(s) => s.parse::<f64>().unwrap_or(f64::NAN),
            None => x.as_f64().unwrap_or(f64::NAN),
        };
        out.insert(
            r["metric"].to_string(),
            pts.iter().map(|p| (num(&p[0]), num(&p[1]))).collect(),
        );
    }
    out
}

/// Points of `a` and `b` that differ (series missing on one side count all their points),
/// values compared to 1e-9 relative.
fn differences(
    a: &BTreeMap<String, Vec<(f64, f64)>>,
    b: &BTreeMap<String, Vec<(f64, f64)>>,
) -> usize {
    let close = |x: f64, y: f64| {
        (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
    };
    let mut n = 0;
    for (k, pa) in a {
        match b.get(k) {
            None => n += pa.len(),
            Some(pb) if pa.len() != pb.len() => n += pa.len().max(pb.len()),
            Some(pb) => {
                n += pa
                    .iter()
                    .zip(pb)
                    .filter(|(x, y)| x.0 != y.0 || !close(x.1, y.1))
                    .count()
            }
        }
    }
    n + b
        .iter()
        .filter(|(k, _)| !a.contains_key(*k))
        .map(|(_, p)| p.len())
        .sum::<usize>()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = work_dir("query-bench")?;
    let end = now_ms() / 60_000 * 60_000 - args.ago_minutes * 60_000;
    let t0 = end - args.minutes * 60_000;
    let (mut source, queries): (Box<dyn Source>, &[Query]) = match args.shape {
        DataShape::Requests => (
            Box::new(Requests {
                t0,
                jobs: 10,
                instances: (args.series / 100).max(1),
                codes: 10,
            }),
            REQUESTS_QUERIES,
        ),
        DataShape::Kappie => (Box::new(KappieNodes::new(t0, args.nodes)), KAPPIE_QUERIES),
    };
    let n_series = source.series();

    let kappie = Collector::start(&args.collector, &work, &[])?;
    let kbase = kappie.base.clone();
    let p = Prometheus::start(&work.join("prometheus"), "");

    // Ten-minute slices across all series (Prometheus appends only within an hour of its
    // newest sample), 5,000 series per request.
    let started = Instant::now();
    let mut total = 0usize;
    let mut from = t0;
    while from <= end {
        let to = (from + 600_000).min(end + 1);
        let batch = source.slice(from, to);
        total += batch.iter().map(|s| s.samples.len()).sum::<usize>();
        for chunk in batch.chunks(5_000) {
            prom::remote_write(&format!("{kbase}/api/v1/write"), chunk.to_vec())
                .map_err(anyhow::Error::msg)?;
            p.write(chunk.to_vec()).map_err(anyhow::Error::msg)?;
        }
        from = to;
    }
    eprintln!(
        "loaded {n_series} series, {total} samples into each in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if args.ago_minutes >= 75 {
        // The collector's maintenance (every minute) compacts windows whose end is 15
        // minutes past.
        let windows = (end.div_euclid(3_600_000) - t0.div_euclid(3_600_000) + 1) as f64;
        let waited = Instant::now();
        loop {
            let m = ureq::get(&format!("{kbase}/metrics"))
                .call()?
                .into_string()?;
            let done = m
                .lines()
                .find_map(|l| l.strip_prefix("kappie_storage_windows_compacted_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if done >= windows {
                eprintln!(
                    "kappie compacted {done} windows after {:.0} s",
                    waited.elapsed().as_secs_f64()
                );
                break;
            }
            if waited.elapsed() > Duration::from_secs(180) {
                bail!("Kappie compacted {done} of {windows} windows in 180 s");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    let secs = |ms: i64| format!("{}", ms as f64 / 1000.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "| query ({n_series} series, {} runs, load {}) | Kappie median | Kappie p99 | Prometheus median | Prometheus p99 | Kappie / Prometheus | CPU per query, Kappie / Prometheus | answers |",
        args.runs,
        load.split_whitespace().next().unwrap_or("?")
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pids = [kappie.pid(), p.pid()];
    let mut log_ratios = Vec::new();
    let mut log_cpu_ratios = Vec::new();
    for (name, q, range) in queries {
        if args
            .only
            .as_ref()
            .is_some_and(|o| !name.contains(o.as_str()))
        {
            continue;
        }
        let mut lat = [Vec::new(), Vec::new()];
        // CPU time of the answering process across the counted runs (background work of
        // either process during a request is counted too).
        let mut cpu = [0.0f64, 0.0f64];
        let mut answers = [BTreeMap::new(), BTreeMap::new()];
        // Points in which each system's last answer differs from its first (Prometheus
        // breaks `topk` ties over an aggregation in the order of a Go map, which varies).
        let mut unstable = [0usize, 0usize];
        for run in 0..args.runs + 1 {
            for (k, base) in [&kbase, &p.base].into_iter().enumerate() {
                let cpu_before = cpu_ms(pids[k]);
                let t = Instant::now();
                let body = if *range {
                    prom::get_json(
                        &format!("{base}/api/v1/query_range"),
                        &[
                            ("query", q),
                            ("start", &secs(end - 3_600_000)),
                            ("end", &secs(end)),
                            ("step", "60"),
                        ],
                    )
                } else {
                    prom::get_json(
                        &format!("{base}/api/v1/query"),
                        &[("query", q), ("time", &secs(end))],
                    )
                };
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let cpu_used = cpu_ms(pids[k]) - cpu_before;
                if body["status"] != "success" {
                    bail!("{name} failed on {base}: {body}");
                }
                // The first run of each warms caches and is not counted.
                if run > 0 {
                    lat[k].push(ms);
                    cpu[k] += cpu_used;
                } else {
                    answers[k] = answer(&body);
                }
                if run == args.runs {
                    unstable[k] = differences(&answers[k], &answer(&body));
                }
            }
        }
        if answers[0].len() != answers[1].len() {
            bail!(
                "{name}: Kappie returned {} series, Prometheus {}",
                answers[0].len(),
                answers[1].len()
            );
        }
        let diff = differences(&answers[0], &answers[1]);
        for l in lat.iter_mut() {
            l.sort_by(|a, b| a.total_cmp(b));
        }
        let ratio = percentile(&lat[0], 0.5) / percentile(&lat[1], 0.5);
        log_ratios.push(ratio.ln());
        let runs = args.runs.max(1) as f64;
        let cpu_ratio = cpu[0] / cpu[1];
        log_cpu_ratios.push(cpu_ratio.ln());
        println!(
            "| `{name}` | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {ratio:.2} | {:.1} / {:.1} ms ({cpu_ratio:.2}) | {} |",
            percentile(&lat[0], 0.5),
            percentile(&lat[0], 0.99),
            percentile(&lat[1], 0.5),
            percentile(&lat[1], 0.99),
            cpu[0] / runs,
            cpu[1] / runs,
            match (diff, unstable) {
                (0, _) => format!("{} series, equal", answers[0].len()),
                (_, [0, 0]) => format!("{} series, {diff} points differ", answers[0].len()),
                (_, [k, p]) => format!(
                    "{} series, {diff} points differ; between the first and last run \
                     Kappie's differ in {k}, Prometheus's in {p}",
                    answers[0].len()
                ),
            }
        );
    }
    let gm = (log_ratios.iter().sum::<f64>() / log_ratios.len().max(1) as f64).exp();
    let gm_cpu = (log_cpu_ratios.iter().sum::<f64>() / log_cpu_ratios.len().max(1) as f64).exp();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "| geometric mean of Kappie / Prometheus medians, and of CPU (load after: {}) | | | | | {gm:.2} | {gm_cpu:.2} | |",
        load.split_whitespace().next().unwrap_or("?")
    );
    drop(kappie);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
