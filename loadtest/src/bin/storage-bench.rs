//! Benchmark: Kappie's store against a real Prometheus fed the same generated data in the
//! same run.
//!
//! Data: `--series` Kappie-named series (5 metrics, 100 nodes), one sample per 10 s step for
//! `--samples` steps ending now, in one of three `--shape`s (seeded by `--seed`):
//!
//! - `friendly`: exact 10 s timestamps; counters growing by a pseudo-random 0..=4 per step
//!   and a gauge wandering between 100 and 115. The generator of the figures before the
//!   shapes existed; easy for any delta codec.
//! - `realistic` (default): shaped like a node shipper's series. Timestamps 0..=9 ms late,
//!   the same for a node's series in a step; packet counters growing by a drifting rate of
//!   100..5,000 per step with 25 % noise; byte counters by 10^4..10^6; drop counters idle
//!   but for bursts (1 % per step, 1..=500 per step, each step of a burst going on with
//!   probability 1/2); tcp_state gauges moving by round(N(0, 2)) per step.
//! - `hostile`: each series' timestamps anywhere in their 10 s step; random floats, a counter
//!   growing by uniform integers below 2^40, a float counter, an integer gauge below 2^32.
//!
//! The exact definitions are in `kappie_loadtest::shapes`. With `--recording FILE` the data
//! is instead a recording of a real shipper on a busy host (`loadtest/record-busy-host.sh`;
//! one is committed as `loadtest/recordings/busy-host.pb.zst`), moved by whole hours to end
//! in the last hour; `--series`, `--samples`, `--shape` and `--seed` are then unused.
//!
//! Kappie's store is written in-process through its `Appender` (10,000 samples per commit,
//! each commit fsynced); Prometheus 2.42 receives the same samples by remote write (snappy
//! protobuf, 10,000 samples per request, two senders, each owning half of the series), and
//! the same samples are written as OpenMetrics text and turned into a Prometheus block by
//! `promtool tsdb create-blocks-from openmetrics`.
//!
//! Reports ingest samples/s, on-disk bytes per sample fresh (Kappie's data directory right
//! after ingest, before any maintenance, as after a crash: log, staged chunks, index,
//! flushed; running, after one maintenance pass at the time of the last sample, as the
//! collector runs it every minute: windows over for 15 minutes compacted, the log
//! truncated to what the head chunks still need; and after a clean stop, `Storage::close`,
//! which cuts the head chunks and truncates the log; Prometheus's WAL and head, running)
//! and compacted (Kappie after `maintain` compacted every window; the Prometheus
//! block: chunks, index, meta), resident memory per series, and the time to read 1 h of
//! 10,000 series (Kappie: `Querier::select` in-process; Prometheus: an instant query of a
//! 1 h range selector over HTTP).
//!
//! Needs `prometheus` and `promtool` on the PATH (`apt-get install prometheus`).

use anyhow::bail;
use clap::Parser;
use kappie_loadtest::shapes::{Dataset, Shape, STEP_MS};
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
    /// What the data looks like (see the module documentation).
    #[arg(long, value_enum, default_value_t = Shape::Realistic)]
    shape: Shape,
    /// Seed of the generator's random numbers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 19190)]
    prometheus_port: u16,
    /// Size of the pages compaction writes (`StorageConfig::page_bytes`).
    #[arg(long, default_value_t = StorageConfig::default().page_bytes)]
    page_bytes: usize,
    /// Size of the write-ahead log's segments (`StorageConfig::wal_segment_bytes`).
    #[arg(long, default_value_t = StorageConfig::default().wal_segment_bytes)]
    wal_segment_bytes: u64,
    /// Measure Kappie only (no Prometheus column): for trying out storage changes.
    #[arg(long)]
    kappie_only: bool,
    /// Keep the data directories instead of deleting them at the end.
    #[arg(long)]
    keep: bool,
    /// Use this recording of a real shipper (`record-dump`) instead of generated data.
    #[arg(long)]
    recording: Option<std::path::PathBuf>,
}

const BATCH: usize = 10_000;

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
    let (data, shape_name) = match &args.recording {
        Some(path) => (
            Dataset::load(path, now)?,
            format!(
                "recorded ({})",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
        ),
        None => (
            Dataset::generate(args.shape, args.seed, t0, args.series, args.samples),
            args.shape.name().to_string(),
        ),
    };
    let (n_series, n_steps) = (data.series(), data.steps());
    let total = data.total_samples() as f64;
    let work = kappie_loadtest::work_dir("storage-bench")?;
    eprintln!(
        "{shape_name}: {n_series} series, up to {n_steps} samples each, {total} samples; data under {}",
        work.display()
    );
    let labels = &data.labels;
    // Generated data: nodes 0..9, 10 % of the series; a recording (one node): every series.
    let (sel_name, sel_value, sel_promql) = match args.recording {
        Some(_) => ("__name__", ".+", "{__name__=~\".+\"}[1h]"),
        None => ("node_name", "node-[0-9]", "{node_name=~\"node-[0-9]\"}[1h]"),
    };
    let select_matchers = || vec![Matcher::new(MatchOp::Regex, sel_name, sel_value).unwrap()];
    let last_t = data
        .samples
        .iter()
        .filter_map(|s| s.last())
        .map(|s| s.0)
        .max()
        .unwrap_or(now);

    // Kappie.
    let kdir = work.join("kappie");
    // The generator's own label sets exist before the baseline, so they are not counted.
    let klabels: Vec<Labels> = labels
        .iter()
        .map(|l| Labels::new(l.clone()).unwrap())
        .collect();
    let config = StorageConfig {
        page_bytes: args.page_bytes,
        wal_segment_bytes: args.wal_segment_bytes,
        ..StorageConfig::default()
    };
    let rss0 = rss_kib(std::process::id());
    let store = Storage::open(&kdir, &config)?;
    eprintln!(
        "kappie: RSS {} MiB after generating labels and opening",
        rss_kib(std::process::id()) / 1024
    );
    let started = Instant::now();
    for step in 0..n_steps {
        let vals: Vec<(usize, i64, f64)> = data.step(step, 0..n_series).collect();
        for chunk in vals.chunks(BATCH) {
            let mut a = store.appender();
            for &(i, t, v) in chunk {
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
                n_steps,
                rss_kib(std::process::id()) / 1024
            );
        }
    }
    let k_ingest = total / started.elapsed().as_secs_f64();
    let k_rss = rss_kib(std::process::id()).saturating_sub(rss0);
    // Fresh, running (or after a crash): head chunks are only in the log.
    store.flush()?;
    let k_fresh = du(&kdir);
    eprintln!(
        "kappie fresh: wal {} bytes (of which preallocated, not yet written: {}), staging {} bytes, main {} bytes",
        du(&kdir.join("wal")),
        du(&kdir.join("wal")).saturating_sub(store.wal_bytes_after(0)),
        du(&kdir.join("staging")),
        du(&kdir.join("main"))
    );
    // Fresh, running: the collector's maintenance (every minute) at the last sample's time.
    store.maintain(last_t)?;
    store.flush()?;
    let k_running = du(&kdir);
    eprintln!(
        "kappie running (after a maintenance pass): wal {} bytes (of which preallocated, not yet written: {}), staging {} bytes, main {} bytes, blocks {} bytes",
        du(&kdir.join("wal")),
        du(&kdir.join("wal")).saturating_sub(store.wal_bytes_after(0)),
        du(&kdir.join("staging")),
        du(&kdir.join("main")),
        du(&kdir.join("blocks"))
    );
    // Fresh after a clean stop: each sample once, in its chunk.
    store.close()?;
    let k_closed = du(&kdir);
    eprintln!(
        "kappie after a clean stop: wal {} bytes, staging {} bytes, main {} bytes",
        du(&kdir.join("wal")),
        du(&kdir.join("staging")),
        du(&kdir.join("main"))
    );
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
    if store.series_count() != n_series {
        bail!(
            "reopened store holds {} series, not {n_series}",
            store.series_count()
        );
    }
    eprintln!(
        "kappie: XOR chunk bytes alone {:.2} per sample; reopening {} series took {:.2} s",
        raw as f64 / total,
        store.series_count(),
        reopen.elapsed().as_secs_f64()
    );
    drop(store);
    if args.kappie_only {
        println!(
            "| Kappie only, {shape_name} | ingest {k_ingest:.0} samples/s | fresh {:.2} B/sample | running {:.2} B/sample | after a clean stop {:.2} B/sample | compacted {:.3} B/sample | RSS {:.0} B/series | read {:.1} ms |",
            k_fresh as f64 / total,
            k_running as f64 / total,
            k_closed as f64 / total,
            k_disk as f64 / total,
            k_rss as f64 * 1024.0 / n_series as f64,
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
        (0..n_series / 2).collect(),
        (n_series / 2..n_series).collect(),
    ];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for half in &halves {
            let (base, data) = (&base, &data);
            handles.push(s.spawn(move || -> anyhow::Result<()> {
                for step in 0..n_steps {
                    let vals: Vec<(usize, i64, f64)> =
                        data.step(step, half.iter().copied()).collect();
                    for chunk in vals.chunks(BATCH) {
                        let req = pb::WriteRequest {
                            timeseries: chunk
                                .iter()
                                .map(|&(i, t, v)| pb::TimeSeries {
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
                .query("query", sel_promql)
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

    // The same samples as a Prometheus block (what Prometheus's compaction makes of its head).
    let om = work.join("samples.om");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&om)?);
    data.write_openmetrics(&mut w)?;
    std::io::Write::flush(&mut w)?;
    drop(w);
    let bdir = work.join("prometheus-blocks");
    let started = Instant::now();
    let out = std::process::Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&bdir)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run promtool (apt-get install prometheus): {e}"))?;
    if !out.status.success() {
        bail!(
            "promtool tsdb create-blocks-from openmetrics failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&om);
    let p_block = du(&bdir);
    let blocks: Vec<String> = std::fs::read_dir(&bdir)?
        .flatten()
        .filter(|e| e.path().join("meta.json").exists())
        .map(|e| {
            format!(
                "{} bytes (chunks {}, index {})",
                du(&e.path()),
                du(&e.path().join("chunks")),
                std::fs::metadata(e.path().join("index"))
                    .map(|m| m.len())
                    .unwrap_or(0)
            )
        })
        .collect();
    eprintln!(
        "prometheus: {} block(s) from promtool in {:.1} s: {}",
        blocks.len(),
        started.elapsed().as_secs_f64(),
        blocks.join("; ")
    );
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }

    println!(
        "| measure ({shape_name} shape, {n_series} series x {n_steps} samples) | Kappie | Prometheus 2.42 |"
    );
    println!("|---|---|---|");
    println!("| ingest, samples/s | {k_ingest:.0} | {p_ingest:.0} |");
    println!(
        "| fresh before any maintenance: bytes per sample (Kappie log + staging + index, flushed, as after a crash; Prometheus WAL + head) | {:.2} | {:.2} |",
        k_fresh as f64 / total,
        p_disk as f64 / total
    );
    println!(
        "| fresh, running (Kappie after one maintenance pass, as every minute: finished windows compacted, log truncated; Prometheus WAL + head as above) | {:.2} | {:.2} |",
        k_running as f64 / total,
        p_disk as f64 / total
    );
    println!(
        "| fresh after a clean stop (Kappie: `close` cut the head chunks and truncated the log; Prometheus WAL + head as above) | {:.2} | {:.2} |",
        k_closed as f64 / total,
        p_disk as f64 / total
    );
    println!(
        "| compacted: bytes per sample incl. index (Kappie after maintain; Prometheus block from promtool) | {:.3} | {:.3} |",
        k_disk as f64 / total,
        p_block as f64 / total
    );
    println!(
        "| on-disk bytes per sample (whole data dir) | {:.2} | {:.2} |",
        k_disk as f64 / total,
        p_disk as f64 / total
    );
    println!(
        "| resident memory per series, bytes (RSS growth / series) | {:.0} | {:.0} |",
        k_rss as f64 * 1024.0 / n_series as f64,
        p_rss as f64 * 1024.0 / n_series as f64
    );
    println!(
        "| read 1 h of {k_n} / {p_n} series, median of 5, ms | {:.1} | {:.1} |",
        median(k_sel),
        median(p_sel)
    );
    Ok(())
}
