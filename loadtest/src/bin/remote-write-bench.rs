//! Remote write out, measured against a real Prometheus 2.42 on loopback.
//!
//! 1. Throughput: with Prometheus stopped, `--drain-samples` samples are written into a
//!    `kappie-collector` process; Prometheus starts and the time until Kappie has
//!    delivered them all gives samples/s.
//! 2. Outage: samples keep arriving at `--rate` samples/s; after a minute Prometheus is
//!    stopped for `--outage-secs`, then started again on the same port and data. Reported:
//!    the backlog (log bytes not yet delivered) at the end of the outage, and the time from
//!    the restart until the backlog is gone; then every sample is checked in Prometheus.
//!
//! Needs `prometheus` (`apt-get install prometheus`) and the collector binary
//! (`cargo build --release -p kappie-collector`).

use anyhow::{bail, Context};
use clap::Parser;
use kappie_loadtest::{now_ms, work_dir, Collector};
use kappie_testkit::prometheus::{self as prom, Prometheus};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Samples written while Prometheus is down, then drained (phase 1).
    #[arg(long, default_value_t = 2_000_000)]
    drain_samples: usize,
    /// Series the samples spread over.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Samples per second arriving during phase 2.
    #[arg(long, default_value_t = 2_000)]
    rate: usize,
    /// Length of the destination outage in phase 2, seconds.
    #[arg(long, default_value_t = 300)]
    outage_secs: u64,
    #[arg(long, default_value = "target/release/kappie-collector")]
    collector: String,
}

fn metric(base: &str, name: &str) -> anyhow::Result<f64> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()?
        .into_string()?;
    let prefix = format!("{name}{{destination=\"url-0\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .context("metric missing")?
        .parse()
        .context("metric value")
}

/// Writes one sample for each of `series` series at time `t` (value `v`) into Kappie.
fn write_step(kbase: &str, series: usize, t: i64, v: f64) -> anyhow::Result<()> {
    let url = format!("{kbase}/api/v1/write");
    for chunk in (0..series).collect::<Vec<_>>().chunks(5_000) {
        let batch = chunk
            .iter()
            .map(|i| {
                prom::series(
                    &[("__name__", "rwb_total"), ("s", &i.to_string())],
                    &[(t, v + *i as f64)],
                )
            })
            .collect();
        prom::remote_write(&url, batch).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn wait_drained(kbase: &str, want_sent: f64, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let sent = metric(kbase, "kappie_remote_write_samples_sent_total")?;
        let backlog = metric(kbase, "kappie_remote_write_backlog_bytes")?;
        if sent >= want_sent && backlog == 0.0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("not drained after {limit:?}: sent {sent}, backlog {backlog} bytes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn prometheus_count(p: &Prometheus, at: i64) -> f64 {
    let v = p.get(
        "/api/v1/query",
        &[
            ("query", "sum(count_over_time(rwb_total[2h]))"),
            ("time", &format!("{}", at as f64 / 1000.0)),
        ],
    );
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map_or(0.0, |s| s.parse().unwrap_or(0.0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = work_dir("rw-bench")?;
    let pport = prom::free_port();
    let kappie = Collector::start(
        &args.collector,
        &work,
        &[format!(
            "--remote-write-url=http://127.0.0.1:{pport}/api/v1/write"
        )],
    )?;
    let kbase = kappie.base.clone();
    let pdir = work.join("prometheus");

    // Phase 1: a backlog written while the destination is down, then drained.
    let steps = args.drain_samples / args.series;
    let t0 = now_ms() - 40 * 60_000;
    let started = Instant::now();
    for k in 0..steps {
        write_step(&kbase, args.series, t0 + k as i64 * 1_000, k as f64)?;
    }
    let total = (steps * args.series) as f64;
    eprintln!(
        "phase 1: {total} samples into Kappie in {:.1} s; backlog {:.1} MB",
        started.elapsed().as_secs_f64(),
        metric(&kbase, "kappie_remote_write_backlog_bytes")? / 1e6
    );
    let p = Prometheus::start_on(&pdir, "", pport);
    let drain = wait_drained(&kbase, total, Duration::from_secs(600))?;
    println!(
        "throughput: {total} samples delivered to Prometheus in {:.2} s = {:.0} samples/s",
        drain.as_secs_f64(),
        total / drain.as_secs_f64()
    );

    // Phase 2: steady arrival, a minute healthy, then the outage.
    let series2 = args.rate.min(args.series).max(1);
    let per_sec_steps = (args.rate / series2).max(1);
    let mut t = t0 + steps as i64 * 1_000;
    let mut written = total;
    let mut tick = |kbase: &str| -> anyhow::Result<()> {
        for _ in 0..per_sec_steps {
            write_step(kbase, series2, t, (t - t0) as f64)?;
            t += 1_000 / per_sec_steps as i64;
            written += series2 as f64;
        }
        Ok(())
    };
    let run_for =
        |secs: u64, tick: &mut dyn FnMut(&str) -> anyhow::Result<()>| -> anyhow::Result<()> {
            let start = Instant::now();
            let mut next = start;
            while start.elapsed() < Duration::from_secs(secs) {
                tick(&kbase)?;
                next += Duration::from_secs(1);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Ok(())
        };
    run_for(60, &mut tick)?;
    drop(p);
    eprintln!("phase 2: destination stopped for {} s", args.outage_secs);
    run_for(args.outage_secs, &mut tick)?;
    let backlog = metric(&kbase, "kappie_remote_write_backlog_bytes")?;
    let lag = metric(&kbase, "kappie_remote_write_lag_seconds")?;
    let p = Prometheus::start_on(&pdir, "", pport);
    let restarted = Instant::now();
    // Arrival continues while the backlog drains.
    let mut recovered = None;
    while recovered.is_none() {
        tick(&kbase)?;
        if metric(&kbase, "kappie_remote_write_backlog_bytes")? == 0.0 {
            recovered = Some(restarted.elapsed());
        }
        if restarted.elapsed() > Duration::from_secs(900) {
            bail!("backlog not drained 15 minutes after the outage");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered = recovered.unwrap_or_default();
    let _ = wait_drained(&kbase, written, Duration::from_secs(120))?;
    let failed = metric(&kbase, "kappie_remote_write_samples_failed_total")?;
    let dropped = metric(&kbase, "kappie_remote_write_samples_dropped_total")?;
    let in_prom = prometheus_count(&p, t + 1_000);
    println!(
        "outage of {} s at {} samples/s: backlog at its end {:.1} MB (lag {:.0} s); drained {:.1} s after the destination returned (arrival continuing)",
        args.outage_secs,
        args.rate,
        backlog / 1e6,
        lag,
        recovered.as_secs_f64()
    );
    println!(
        "every sample: written {written}, in Prometheus {in_prom}, dropped {dropped}, failed attempts {failed}"
    );
    if in_prom != written || dropped != 0.0 {
        bail!("samples missing in Prometheus");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
