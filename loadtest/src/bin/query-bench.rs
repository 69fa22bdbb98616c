//! PromQL latency of a dashboard-like query set, Kappie next to Prometheus 2.42 on the same
//! data in the same run.
//!
//! Generates `--series` counters (`kb_requests_total{job, instance, code}`) plus an info
//! metric, one sample every 15 s for `--minutes`, remote-writes the same samples into a
//! Kappie collector (`--collector`, started here on loopback with its own data directory)
//! and into a Prometheus started here, then runs every query `--runs` times against each,
//! alternating, through the HTTP API, and prints median and p99 latency per query.
//!
//! Needs `prometheus` on the PATH (`apt-get install prometheus`) and the collector binary
//! (`cargo build --release -p kappie-collector`).

use anyhow::bail;
use clap::Parser;
use kappie_loadtest::{now_ms, work_dir, Collector};
use kappie_testkit::prometheus::{self as prom, Prometheus};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Counter series to generate (10 jobs x N/100 instances x 10 codes).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Minutes of data, one sample every 15 s, ending now.
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
    /// The collector binary.
    #[arg(long, default_value = "target/release/kappie-collector")]
    collector: String,
}

const STEP_MS: i64 = 15_000;

/// `(name, query, range?)`: range queries cover the last hour at a 60 s step, like a
/// Grafana panel; instant queries run at the end of the data.
const QUERIES: &[(&str, &str, bool)] = &[
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = work_dir("query-bench")?;
    let end = now_ms() / 60_000 * 60_000 - args.ago_minutes * 60_000;
    let t0 = end - args.minutes * 60_000;
    let jobs = 10;
    let codes = 10;
    let instances = (args.series / (jobs * codes)).max(1);

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
        let mut batch = Vec::new();
        for j in 0..jobs {
            for i in 0..instances {
                for c in 0..codes {
                    let rate = ((j * 7 + i * 3 + c) % 13 + 1) as f64;
                    let mut samples = Vec::new();
                    let mut t = from + (from - t0).rem_euclid(STEP_MS);
                    while t < to {
                        samples.push((t, ((t - t0) / STEP_MS) as f64 * rate));
                        t += STEP_MS;
                    }
                    total += samples.len();
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
            let info: Vec<(i64, f64)> = {
                let mut t = from + (from - t0).rem_euclid(STEP_MS);
                let mut v = Vec::new();
                while t < to {
                    v.push((t, 1.0));
                    t += STEP_MS;
                }
                v
            };
            batch.push(prom::series(
                &[
                    ("__name__", "kb_info"),
                    ("job", &format!("job-{j}")),
                    ("team", &format!("team-{}", j % 3)),
                ],
                &info,
            ));
        }
        for chunk in batch.chunks(5_000) {
            prom::remote_write(&format!("{kbase}/api/v1/write"), chunk.to_vec())
                .map_err(anyhow::Error::msg)?;
            p.write(chunk.to_vec()).map_err(anyhow::Error::msg)?;
        }
        from = to;
    }
    eprintln!(
        "loaded {} series, {total} samples into each in {:.1} s",
        jobs * instances * codes,
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
    println!(
        "| query ({} series, {} runs) | Kappie median | Kappie p99 | Prometheus median | Prometheus p99 |",
        jobs * instances * codes,
        args.runs
    );
    println!("|---|---|---|---|---|");
    for (name, q, range) in QUERIES {
        let mut lat = [Vec::new(), Vec::new()];
        let mut answers = [0usize, 0usize];
        for run in 0..args.runs + 1 {
            for (k, base) in [&kbase, &p.base].into_iter().enumerate() {
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
                if body["status"] != "success" {
                    bail!("{name} failed on {base}: {body}");
                }
                answers[k] = body["data"]["result"].as_array().map_or(0, Vec::len);
                // The first run of each warms caches and is not counted.
                if run > 0 {
                    lat[k].push(ms);
                }
            }
        }
        if answers[0] != answers[1] {
            bail!(
                "{name}: Kappie returned {} series, Prometheus {}",
                answers[0],
                answers[1]
            );
        }
        for l in lat.iter_mut() {
            l.sort_by(|a, b| a.total_cmp(b));
        }
        println!(
            "| `{name}` | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile(&lat[0], 0.5),
            percentile(&lat[0], 0.99),
            percentile(&lat[1], 0.5),
            percentile(&lat[1], 0.99)
        );
    }
    drop(kappie);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
