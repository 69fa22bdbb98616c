//! Benchmark: Kappie's store against a real Prometheus fed the same generated data in the
//! same run.
//!
//! Data: `--series` Kappie-shaped series (100 nodes, counters moving by small amounts and
//! gauges), one sample every 10 s for `--samples` steps ending now. Kappie's store is written
//! in-process through its `Appender` (10,000 samples per commit, each commit fsynced);
//! Prometheus 2.42 receives the same samples by remote write (snappy protobuf, 10,000
//! samples per request, two senders, each owning half of the series).
//!
//! Reports ingest samples/s, on-disk bytes per sample, resident memory per series, and the
//! time to read 1 h of 10,000 series (Kappie: `Querier::select` in-process; Prometheus: an
//! instant query of a 1 h range selector over HTTP).
//!
//! Needs `prometheus` on the PATH (`apt-get install prometheus`).

use anyhow::bail;
use clap::Parser;
use kappie_proto::prometheus as pb;
use kappie_storage::{Appender, Labels, MatchOp, Matcher, Querier, Storage, StorageConfig};
use kappie_testkit::prometheus::{remote_write, Prometheus};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    series: usize,
    #[arg(long, default_value_t = 360)]
    samples: usize,
    #[arg(long, default_value_t = 19190)]
    prometheus_port: u16,
    /// Size of the pages compaction writes (`StorageConfig::page_bytes`).
    #[arg(long, default_value_t = StorageConfig::default().page_bytes)]
    page_bytes: usize,
    /// Measure Kappie only (no Prometheus column): for trying out storage changes.
    #[arg(long)]
    kappie_only: bool,
    /// Keep the data directories instead of deleting them at the end.
    #[arg(long)]
    keep: bool,
}

const BATCH: usize = 10_000;
const STEP_MS: i64 = 10_000;
const METRICS: [&str; 5] = [
    "kappie_tcp_connection_stats",
    "kappie_ip_connection_stats",
    "kappie_interface_stats",
    "kappie_drop_count",
    "kappie_tcp_state",
];

fn series_labels(i: usize) -> Vec<(String, String)> {
    let metric = METRICS[i % METRICS.len()];
    vec![
        ("__name__".into(), metric.into()),
        ("cluster".into(), "bench".into()),
        ("node_name".into(), format!("node-{}", i % 100)),
        ("statistic_name".into(), format!("Stat{}", i / 100)),
    ]
}

fn hash(i: usize, step: usize) -> u64 {
    let mut h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (step as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 31;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 29)
}

/// Deterministic values, step by step: counters grow by a pseudo-random 0..=4 per step
/// (not a repeating pattern, which page compression would find), `kappie_tcp_state` is a
/// gauge that wanders between 100 and 115.
struct Values {
    series: Vec<usize>,
    current: Vec<f64>,
}

impl Values {
    fn new(series: Vec<usize>) -> Self {
        let current = series.iter().map(|&i| (i * 1000) as f64).collect();
        Values { series, current }
    }

    /// Values of step `step` (steps must come in order), with the series index.
    fn step(&mut self, step: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        for (k, &i) in self.series.iter().enumerate() {
            let h = hash(i, step);
            if i % METRICS.len() == 4 {
                self.current[k] = (100 + (h >> 60)) as f64;
            } else if step > 0 {
                self.current[k] += (h % 5) as f64;
            }
        }
        self.series
            .iter()
            .copied()
            .zip(self.current.iter().copied())
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The store's own logs (compaction figures) with RUST_LOG=info.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 / STEP_MS * STEP_MS;
    let t0 = now - (args.samples as i64 - 1) * STEP_MS;
    let total = (args.series * args.samples) as f64;
    let work = kappie_loadtest::work_dir("storage-bench")?;
    eprintln!(
        "{} series x {} samples = {} samples; data under {}",
        args.series,
        args.samples,
        total,
        work.display()
    );
    let labels: Vec<Vec<(String, String)>> = (0..args.series).map(series_labels).collect();
    let select_matchers = || {
        vec![Matcher::new(MatchOp::Regex, "node_name", "node-[0-9]").unwrap()] // nodes 0..9: 10% of the series
    };

    // Kappie.
    let kdir = work.join("kappie");
    // The generator's own label sets exist before the baseline, so they are not counted.
    let klabels: Vec<Labels> = labels
        .iter()
        .map(|l| Labels::new(l.clone()).unwrap())
        .collect();
    let config = StorageConfig {
        page_bytes: args.page_bytes,
        ..StorageConfig::default()
    };
    let rss0 = rss_kib(std::process::id());
    let store = Storage::open(&kdir, &config)?;
    eprintln!(
        "kappie: RSS {} MiB after generating labels and opening",
        rss_kib(std::process::id()) / 1024
    );
    let mut values = Values::new((0..args.series).collect());
    let started = Instant::now();
    for step in 0..args.samples {
        let t = t0 + step as i64 * STEP_MS;
        let vals: Vec<(usize, f64)> = values.step(step).collect();
        for chunk in vals.chunks(BATCH) {
            let mut a = store.appender();
            for &(i, v) in chunk {
                a.append(&klabels[i], t, v)?;
            }
            let r = a.commit()?;
            if r.refused() > 0 {
                bail!("Kappie refused samples: {r:?}");
            }
        }
        if step % 60 == 59 {
            eprintln!(
                "kappie: {} of {} steps, RSS {} MiB",
                step + 1,
                args.samples,
                rss_kib(std::process::id()) / 1024
            );
        }
    }
    let k_ingest = total / started.elapsed().as_secs_f64();
    let k_rss = rss_kib(std::process::id()).saturating_sub(rss0);
    let maint = Instant::now();
    // Two hours on: every head chunk is cut, the log truncated and every window compacted
    // (a window is over once its end is head_idle past).
    let report = store.maintain(now + 7_200_000)?;
    store.flush()?;
    eprintln!(
        "kappie: maintenance (cut {} head chunks, compacted {} windows) took {:.1} s",
        report.idle_chunks_cut,
        report.windows_compacted,
        maint.elapsed().as_secs_f64()
    );
    let k_disk = du(&kdir);
    eprintln!(
        "kappie disk: main {} bytes, blocks {} bytes ({} blocks)",
        du(&kdir.join("main")),
        du(&kdir.join("blocks")),
        store.block_count()
    );
    let mut k_sel = Vec::new();
    let mut k_n = 0;
    for _ in 0..5 {
        let s = Instant::now();
        let r = store.select(&select_matchers(), now - 3_600_000, now)?;
        k_sel.push(s.elapsed().as_secs_f64() * 1e3);
        k_n = r.len();
    }
    let all = [Matcher::new(MatchOp::Regex, "__name__", ".+")?];
    let raw: usize = store
        .select_chunks(&all, i64::MIN, i64::MAX)?
        .iter()
        .flat_map(|s| &s.chunks)
        .map(|c| c.bytes.len())
        .sum();
    drop(store);
    let reopen = Instant::now();
    let store = Storage::open(&kdir, &config)?;
    eprintln!(
        "kappie: XOR chunk bytes alone {:.2} per sample; reopening {} series took {:.2} s",
        raw as f64 / total,
        store.series_count(),
        reopen.elapsed().as_secs_f64()
    );
    drop(store);
    if args.kappie_only {
        println!(
            "| Kappie only | ingest {k_ingest:.0} samples/s | disk {:.3} B/sample | RSS {:.0} B/series | read {:.1} ms |",
            k_disk as f64 / total,
            k_rss as f64 * 1024.0 / args.series as f64,
            median(k_sel)
        );
        if !args.keep {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(());
    }

    // Prometheus.
    let pdir = work.join("prometheus");
    let prom = Prometheus::start_on(&pdir, "", args.prometheus_port);
    let base = prom.base.clone();
    let p_rss0 = rss_kib(prom.pid());
    let started = Instant::now();
    let halves: Vec<Vec<usize>> = vec![
        (0..args.series / 2).collect(),
        (args.series / 2..args.series).collect(),
    ];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for half in &halves {
            let labels = &labels;
            let base = &base;
            handles.push(s.spawn(move || -> anyhow::Result<()> {
                let mut values = Values::new(half.clone());
                for step in 0..args.samples {
                    let t = t0 + step as i64 * STEP_MS;
                    let vals: Vec<(usize, f64)> = values.step(step).collect();
                    for chunk in vals.chunks(BATCH) {
                        let req = pb::WriteRequest {
                            timeseries: chunk
                                .iter()
                                .map(|&(i, v)| pb::TimeSeries {
                                    labels: labels[i]
                                        .iter()
                                        .map(|(n, v)| pb::Label {
                                            name: n.clone(),
                                            value: v.clone(),
                                        })
                                        .collect(),
                                    samples: vec![pb::Sample {
                                        value: v,
                                        timestamp: t,
                                    }],
                                })
                                .collect(),
                            metadata: vec![],
                        };
                        remote_write(&format!("{base}/api/v1/write"), req.timeseries).map_err(
                            |e| anyhow::anyhow!("remote write to prometheus failed: {e}"),
                        )?;
                    }
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().expect("sender thread")?;
        }
        Ok(())
    })?;
    let p_ingest = total / started.elapsed().as_secs_f64();
    let p_rss = rss_kib(prom.pid()).saturating_sub(p_rss0);
    std::thread::sleep(Duration::from_secs(2));
    let p_disk = du(&pdir.join("data"));
    let mut p_sel = Vec::new();
    let mut p_n = 0;
    for _ in 0..5 {
        let s = Instant::now();
        let mut body = String::new();
        std::io::Read::read_to_string(
            &mut ureq::get(&format!("{base}/api/v1/query"))
                .query("query", "{node_name=~\"node-[0-9]\"}[1h]")
                .query("time", &format!("{}", now as f64 / 1000.0))
                .call()?
                .into_reader(),
            &mut body,
        )?;
        p_sel.push(s.elapsed().as_secs_f64() * 1e3);
        let v: serde_json::Value = serde_json::from_str(&body)?;
        p_n = v["data"]["result"].as_array().map(|a| a.len()).unwrap_or(0);
    }
    drop(prom);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }

    println!("| measure | Kappie | Prometheus 2.42 |");
    println!("|---|---|---|");
    println!("| ingest, samples/s | {k_ingest:.0} | {p_ingest:.0} |");
    println!(
        "| on-disk bytes per sample (whole data dir) | {:.2} | {:.2} |",
        k_disk as f64 / total,
        p_disk as f64 / total
    );
    println!(
        "| resident memory per series, bytes (RSS growth / series) | {:.0} | {:.0} |",
        k_rss as f64 * 1024.0 / args.series as f64,
        p_rss as f64 * 1024.0 / args.series as f64
    );
    println!(
        "| read 1 h of {k_n} / {p_n} series, median of 5, ms | {:.1} | {:.1} |",
        median(k_sel),
        median(p_sel)
    );
    Ok(())
}
