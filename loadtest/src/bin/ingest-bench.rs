//! Remote-write ingest throughput, Kappie next to Prometheus 2.42, in the same run.
//!
//! Generates `--series` Kappie-shaped series (`loadtest::shapes`) over `--steps` 10 s steps
//! (360: one hour ending now), encodes every remote-write request once (snappy protobuf,
//! `--series-per-request` series x `--steps-per-request` steps each, step-major so every
//! series' samples arrive in time order), then sends the *same bodies* with `--clients`
//! threads to a fresh Kappie collector and a fresh Prometheus, alternating, `--rounds`
//! times each. Each client owns a fixed share of the series, so no two clients write the
//! same series. Reports samples/s (wall time from first send to last answer), the
//! receiving process's CPU per sample and the 1-minute load average.
//!
//! `--also-collector` adds other collector builds to each round, so that builds are
//! compared with the same bodies, interleaved, in one run.
//!
//! `--churn-every N` starts a new generation of every series each N steps (a `pod` label
//! that changes, as when pods are replaced): the store sees ever new series.
//!
//! Needs `prometheus` on the PATH (`apt-get install prometheus`) and the collector binary
//! (`cargo build --release -p kappie-collector`).

use anyhow::bail;
use clap::Parser;
use kappie_loadtest::shapes::{Dataset, Shape, STEP_MS};
use kappie_loadtest::{now_ms, work_dir, Collector};
use kappie_proto::prometheus as pb;
use kappie_testkit::prometheus::Prometheus;
use prost::Message;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    series: usize,
    /// 10 s steps, ending now.
    #[arg(long, default_value_t = 360)]
    steps: usize,
    #[arg(long, value_enum, default_value = "realistic")]
    shape: Shape,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A new generation of every series (a changed `pod` label) every N steps; 0: never.
    #[arg(long, default_value_t = 0)]
    churn_every: usize,
    #[arg(long, default_value_t = 500)]
    series_per_request: usize,
    #[arg(long, default_value_t = 6)]
    steps_per_request: usize,
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Runs against each system, alternating (Kappie first).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Only Kappie (for profiling).
    #[arg(long)]
    kappie_only: bool,
    #[arg(long, default_value = "target/release/kappie-collector")]
    collector: String,
    /// Another collector binary, run after `--collector` in each round with the same
    /// bodies (repeatable; reported as `kappie#1`, `kappie#2`, ...): builds compared
    /// side by side in one run.
    #[arg(long = "also-collector")]
    also_collectors: Vec<String>,
    /// Extra collector flags.
    #[arg(long = "collector-arg", allow_hyphen_values = true)]
    collector_args: Vec<String>,
}

/// The bodies of one client, in send order, and their sample count.
struct Client {
    bodies: Vec<Vec<u8>>,
    samples: usize,
}

fn encode(series: Vec<pb::TimeSeries>) -> Vec<u8> {
    let req = pb::WriteRequest {
        timeseries: series,
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy compresses any input")
}

fn build(args: &Args) -> Vec<Client> {
    let t0 = (now_ms() / STEP_MS - args.steps as i64) * STEP_MS;
    let d = Dataset::generate(args.shape, args.seed, t0, args.series, args.steps);
    let mut clients: Vec<Client> = (0..args.clients)
        .map(|_| Client {
            bodies: Vec::new(),
            samples: 0,
        })
        .collect();
    let spr = args.steps_per_request.max(1);
    for first in (0..args.steps).step_by(spr) {
        let steps = first..(first + spr).min(args.steps);
        let generation = match args.churn_every {
            0 => 0,
            n => first / n,
        };
        for c in 0..args.clients {
            let mine: Vec<usize> = (c..args.series).step_by(args.clients).collect();
            for part in mine.chunks(args.series_per_request.max(1)) {
                let mut out = Vec::with_capacity(part.len());
                for &i in part {
                    let mut labels: Vec<pb::Label> = d.labels[i]
                        .iter()
                        .map(|(n, v)| pb::Label {
                            name: n.clone(),
                            value: v.clone(),
                        })
                        .collect();
                    if args.churn_every > 0 {
                        labels.push(pb::Label {
                            name: "pod".into(),
                            value: format!("pod-{i}-{generation}"),
                        });
                    }
                    labels.sort_by(|a, b| a.name.cmp(&b.name));
                    let samples: Vec<pb::Sample> = steps
                        .clone()
                        .filter_map(|s| d.samples[i].get(s))
                        .map(|&(t, v)| pb::Sample {
                            value: v,
                            timestamp: t,
                        })
                        .collect();
                    clients[c].samples += samples.len();
                    out.push(pb::TimeSeries { labels, samples });
                }
                clients[c].bodies.push(encode(out));
            }
        }
    }
    clients
}

/// Process CPU time (user + system) in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|x| x.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// Sends every client's bodies in its own thread; returns the wall seconds.
fn send(url: &str, clients: &[Client]) -> anyhow::Result<f64> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                s.spawn(move || -> anyhow::Result<()> {
                    let agent = ureq::AgentBuilder::new().build();
                    for b in &c.bodies {
                        match agent
                            .post(url)
                            .set("Content-Encoding", "snappy")
                            .set("Content-Type", "application/x-protobuf")
                            .set("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .send_bytes(b)
                        {
                            Ok(_) => {}
                            Err(ureq::Error::Status(code, r)) => bail!(
                                "{url}: HTTP {code}: {}",
                                r.into_string().unwrap_or_default()
                            ),
                            Err(e) => bail!("{url}: {e}"),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clients = build(&args);
    let samples: usize = clients.iter().map(|c| c.samples).sum();
    let requests: usize = clients.iter().map(|c| c.bodies.len()).sum();
    let bytes: usize = clients.iter().flat_map(|c| &c.bodies).map(Vec::len).sum();
    println!(
        "shape {} series {} steps {} churn_every {}: {samples} samples in {requests} requests ({:.1} MB snappy), {} clients",
        args.shape.name(),
        args.series,
        args.steps,
        args.churn_every,
        bytes as f64 / 1e6,
        args.clients
    );
    let mut systems: Vec<(String, Option<&str>)> = vec![("kappie".into(), Some(&args.collector))];
    for (i, c) in args.also_collectors.iter().enumerate() {
        systems.push((format!("kappie#{}", i + 1), Some(c)));
    }
    if !args.kappie_only {
        systems.push(("prometheus".into(), None));
    }
    for round in 0..args.rounds {
        for (system, binary) in &systems {
            let work = work_dir(&format!(
                "ingest-bench-{round}-{}",
                system.replace('#', "-")
            ))?;
            let load_before = load1();
            let (secs, cpu, rss) = if let Some(binary) = binary {
                let k = Collector::start(binary, &work, &args.collector_args)?;
                let pid = k.pid();
                let c0 = cpu_seconds(pid);
                let secs = send(&format!("{}/api/v1/write", k.base), &clients)?;
                (secs, cpu_seconds(pid) - c0, rss_mib(pid))
            } else {
                let p = Prometheus::start(&work.join("prometheus"), "");
                let pid = p.pid();
                let c0 = cpu_seconds(pid);
                let secs = send(&format!("{}/api/v1/write", p.base), &clients)?;
                (secs, cpu_seconds(pid) - c0, rss_mib(pid))
            };
            println!(
                "round {round} {system:>10}: {:>10.0} samples/s  {secs:6.2} s  cpu {cpu:6.2} s ({:.2} us/sample)  rss {rss:.0} MiB  load1 {load_before} -> {}",
                samples as f64 / secs,
                cpu * 1e6 / samples as f64,
                load1()
            );
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    Ok(())
}
