//! A cluster's worth of node shippers against one collector (issue 15).
//!
//! N simulated shippers run in this process, each with its own identity, session,
//! sequence numbers and 400–640 series shaped like a real node's (`kappie_loadtest::
//! cluster`), pushing over real gRPC on a jittered schedule (each shipper's first
//! collection at a random point of the first interval). The collector is a release
//! `kappie-collector` this run starts on a temporary data directory, or one named by
//! `--collector`, `--collector-http` and `--collector-pid`.
//!
//! Reported: sustained samples/s, push latency, lag behind the schedule and whether the
//! backlog grows, the collector's CPU (/proc/<pid>/stat) per sample, its RSS per active
//! series, the store's bytes per sample; with `--restart-after`, the collector is stopped
//! (SIGKILL or SIGTERM) under load and started again on the same data: the time until every
//! shipper is acknowledged again and a histogram of the reconnects. At the end every
//! count the shippers sent is compared with what the collector stores.
//!
//!   cargo build --release -p kappie-loadtest --bin cluster-sim -p kappie-collector
//!   target/release/cluster-sim --shippers 1000 --interval 10s --duration 3m
//!   target/release/cluster-sim --shippers 200 --interval 10s --duration 2m \
//!       --restart-after 60s --restart-signal kill

use anyhow::{bail, Context};
use clap::Parser;
use kappie_loadtest::cluster::node::Node;
use kappie_loadtest::cluster::process::{self, Managed, Stop};
use kappie_loadtest::cluster::record::Recorder;
use kappie_loadtest::cluster::remote_write::RwSender;
use kappie_loadtest::cluster::report::{self, Point, Report};
use kappie_loadtest::cluster::shipper::{generate, Sender};
use kappie_loadtest::cluster::verify;
use kappie_proto::ingest_client::IngestClient;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "N simulated node shippers against one Kappie collector")]
struct Args {
    #[arg(long, default_value_t = 50)]
    shippers: usize,
    /// Collection interval of every shipper.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the shippers collect; then every queue is drained and checked.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Left out of the steady figures (first pushes carry every series definition);
    /// default two intervals.
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Simulated shippers sharing one HTTP/2 connection (the collector serves at most 16
    /// calls at once per connection).
    #[arg(long, default_value_t = 1)]
    shippers_per_connection: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "sim")]
    cluster: String,
    /// Unsent batches a shipper keeps before merging new ones into the last.
    #[arg(long, default_value_t = 64)]
    max_queued: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// How long to wait for every batch to be acknowledged after the schedule ends.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// How long the collector may take to exit after a signal before it is killed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// Stop the collector this long after the start and start it again.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_after: Option<Duration>,
    #[arg(long, value_enum, default_value_t = Stop::Kill)]
    restart_signal: Stop,
    /// How long the collector stays down before it is started again.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// The collector binary; default `kappie-collector` next to this one.
    #[arg(long)]
    collector_bin: Option<PathBuf>,
    /// An extra flag for the collector this run starts (repeatable).
    #[arg(long = "collector-arg", allow_hyphen_values = true)]
    collector_args: Vec<String>,
    /// gRPC URL of a collector started elsewhere (with --collector-http and
    /// --collector-pid).
    #[arg(long, requires_all = ["collector_http", "collector_pid"])]
    collector: Option<String>,
    #[arg(long)]
    collector_http: Option<String>,
    #[arg(long)]
    collector_pid: Option<u32>,
    /// Its data directory, for bytes per sample.
    #[arg(long)]
    collector_data_dir: Option<PathBuf>,
    /// Send the same nodes to a Prometheus (`prometheus` on the PATH, started here with
    /// its remote-write receiver) by remote write instead, for its cost per sample.
    #[arg(long, conflicts_with_all = ["collector", "restart_after"])]
    prometheus: bool,
    /// Compare series one by one when the run has at most this many.
    #[arg(long, default_value_t = 300_000)]
    verify_series_max: usize,
    #[arg(long)]
    no_verify: bool,
    /// Threads of the simulator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Also write the report as JSON to this file (`-` for stdout instead of the text).
    #[arg(long)]
    json: Option<String>,
    /// Keep the temporary directory (data and collector log).
    #[arg(long)]
    keep: bool,
}

/// The collector under test.
enum Target {
    Managed(Managed),
    External {
        grpc: String,
        http: String,
        pid: u32,
        data_dir: Option<PathBuf>,
    },
    Prometheus(kappie_testkit::prometheus::Prometheus, PathBuf),
}

impl Target {
    fn pid(&self) -> Option<u32> {
        match self {
            Target::Managed(m) => m.pid(),
            Target::External { pid, .. } => Some(*pid),
            Target::Prometheus(p, _) => Some(p.pid()),
        }
    }
    fn http(&self) -> String {
        match self {
            Target::Managed(m) => m.http(),
            Target::External { http, .. } => http.clone(),
            Target::Prometheus(p, _) => p.base.clone(),
        }
    }
    fn data_dir(&self) -> Option<PathBuf> {
        match self {
            Target::Managed(m) => Some(m.data_dir.clone()),
            Target::External { data_dir, .. } => data_dir.clone(),
            Target::Prometheus(_, d) => Some(d.join("data")),
        }
    }
}

/// Collector CPU seconds across restarts: what earlier processes used plus the current.
struct Cpu {
    before: f64,
}

impl Cpu {
    fn now(&self, t: &Target) -> f64 {
        self.before
            + t.pid()
                .and_then(|p| process::cpu_seconds(p).ok())
                .unwrap_or(0.0)
    }
}

fn raise_open_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct; raising the soft limit to the hard.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.shippers == 0 || args.interval.is_zero() {
        bail!("--shippers and --interval must be positive");
    }
    raise_open_files();
    let work = kappie_loadtest::work_dir("cluster-sim")?;
    let mut target = match &args.collector {
        None if args.prometheus => {
            let dir = work.join("prometheus");
            Target::Prometheus(kappie_testkit::prometheus::Prometheus::start(&dir, ""), dir)
        }
        Some(grpc) => Target::External {
            grpc: grpc.clone(),
            http: args.collector_http.clone().unwrap_or_default(),
            pid: args.collector_pid.unwrap_or_default(),
            data_dir: args.collector_data_dir.clone(),
        },
        None => {
            let bin = match &args.collector_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("this binary's directory")?
                    .join("kappie-collector"),
            };
            let mut m = Managed::new(bin, &work, args.collector_args.clone());
            m.start()?;
            Target::Managed(m)
        }
    };
    if args.restart_after.is_some() && !matches!(target, Target::Managed(_)) {
        bail!("--restart-after needs a collector this run starts (no --collector)");
    }
    let grpc = match &target {
        Target::Managed(m) => m.grpc(),
        Target::External { grpc, .. } => grpc.clone(),
        Target::Prometheus(p, _) => format!("{}/api/v1/write", p.base),
    };
    let load_before = process::loadavg();
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = target
        .pid()
        .and_then(|p| process::rss_bytes(p).ok())
        .unwrap_or(0);

    let nodes: Vec<Node> = (0..args.shippers)
        .map(|i| Node::new(args.seed, i, &args.cluster))
        .collect();
    let sizes: Vec<usize> = nodes.iter().map(Node::series).collect();
    let series_total: usize = sizes.iter().sum();
    eprintln!(
        "{} shippers, {series_total} series, every {:?}; collector {grpc}; work dir {}",
        args.shippers,
        args.interval,
        work.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let per_conn = args.shippers_per_connection.max(1);
    let connections = args.shippers.div_ceil(per_conn);
    let channels = {
        let _g = rt.enter();
        (0..if args.prometheus { 0 } else { connections })
            .map(|_| {
                Ok(tonic::transport::Endpoint::from_shared(grpc.clone())?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(30))
                    .connect_lazy())
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let start = Instant::now() + Duration::from_millis(500);
    let rec = Arc::new(Recorder::new(start));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections(args.shippers)
        .max_idle_connections_per_host(args.shippers)
        .timeout(Duration::from_secs(30))
        .build();
    let mut generators = Vec::new();
    let mut senders = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let phase = args.interval.mul_f64(rand::random::<f64>());
        if args.prometheus {
            let sender = RwSender {
                index: i as u32,
                agent: agent.clone(),
                url: grpc.clone(),
                layout: node.layout(),
                rx,
                rec: rec.clone(),
                max_backoff: args.max_backoff,
            };
            senders.push(rt.spawn(sender.run()));
            generators.push(rt.spawn(generate(
                node,
                (start + phase).into(),
                args.interval,
                tx,
                stop_rx.clone(),
                rec.clone(),
            )));
            continue;
        }
        let sender = Sender {
            index: i as u32,
            client: IngestClient::new(channels[i / per_conn].clone())
                .max_encoding_message_size(64 << 20),
            layout: node.layout(),
            session: rand::random::<u64>() | 1,
            rx,
            rec: rec.clone(),
            max_queued: args.max_queued.max(1),
            max_backoff: args.max_backoff,
        };
        senders.push(rt.spawn(sender.run()));
        generators.push(rt.spawn(generate(
            node,
            (start + phase).into(),
            args.interval,
            tx,
            stop_rx.clone(),
            rec.clone(),
        )));
    }

    // Drive the run from this thread: a sample every second, the restart, the end.
    let warmup = args.warmup.unwrap_or(args.interval * 2);
    let mut cpu = Cpu { before: 0.0 };
    let own_cpu = || process::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let mut timeline: Vec<Point> = Vec::new();
    let mut rss_peak = rss_idle;
    let mut window_start: Option<(f64, f64, u64, f64)> = None;
    let mut restart_times = None;
    let mut sample = |target: &Target, cpu: &Cpu, timeline: &mut Vec<Point>| {
        let rss = target
            .pid()
            .and_then(|p| process::rss_bytes(p).ok())
            .unwrap_or(0);
        rss_peak = rss_peak.max(rss);
        let p = Point {
            t_s: start.elapsed().as_secs_f64(),
            queued: rec.queued.load(Relaxed),
            acked_samples: rec.acked_samples.load(Relaxed),
            collector_cpu_s: cpu.now(target),
            collector_rss: rss,
            load1: process::loadavg()[0],
        };
        timeline.push(p);
        p
    };
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let end = start + args.duration;
    let mut next = start;
    while Instant::now() < end {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let p = sample(&target, &cpu, &mut timeline);
        if window_start.is_none() && start.elapsed() >= warmup {
            window_start = Some((p.t_s, p.collector_cpu_s, p.acked_samples, own_cpu()));
        }
        if (p.t_s as u64).is_multiple_of(10) {
            eprintln!(
                "t={:.0}s queued {} acked {} samples load {:.2}",
                p.t_s, p.queued, p.acked_samples, p.load1
            );
        }
        if let (Some(after), None, Target::Managed(m)) =
            (args.restart_after, &restart_times, &mut target)
        {
            if start.elapsed() >= after {
                let before = m.pid().and_then(|p| process::cpu_seconds(p).ok());
                let stop_ms = rec.now_ms() as f64;
                let steady = (stop_ms / 1000.0, cpu.before + before.unwrap_or(0.0));
                m.stop(args.restart_signal, args.stop_timeout)?;
                cpu.before += before.unwrap_or(0.0);
                let exited_ms = rec.now_ms() as f64;
                std::thread::sleep(args.down_for);
                let spawn_ms = rec.now_ms() as f64;
                m.start()?;
                let ready_ms = rec.now_ms() as f64;
                eprintln!(
                    "collector stopped ({:?}) at {:.1} s and ready again {:.0} ms later",
                    args.restart_signal,
                    stop_ms / 1000.0,
                    ready_ms - stop_ms
                );
                restart_times = Some((
                    report::RestartTimes {
                        signal: match args.restart_signal {
                            Stop::Kill => "KILL".into(),
                            Stop::Term => "TERM".into(),
                        },
                        stop_ms,
                        exited_ms,
                        spawn_ms,
                        ready_ms,
                    },
                    steady,
                    rec.acked_samples.load(Relaxed),
                    own_cpu(),
                ));
            }
        }
    }
    let at_end = sample(&target, &cpu, &mut timeline);
    let own_end = own_cpu();
    let _ = stop_tx.send(true);
    let nodes: Vec<Node> = rt.block_on(async {
        let mut v = Vec::with_capacity(generators.len());
        for g in generators {
            v.push(g.await?);
        }
        Ok::<_, anyhow::Error>(v)
    })?;
    eprintln!("schedule over; waiting for every batch to be acknowledged");
    let drain_deadline = Instant::now() + args.drain_timeout;
    while rec.queued.load(Relaxed) > 0 && Instant::now() < drain_deadline {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        sample(&target, &cpu, &mut timeline);
    }
    let unacked = rec.queued.load(Relaxed);
    if unacked == 0 {
        rt.block_on(async {
            for s in senders {
                let _ = s.await;
            }
        });
    }
    let rss_end = target
        .pid()
        .and_then(|p| process::rss_bytes(p).ok())
        .unwrap_or(0);

    let verification = if args.no_verify || unacked > 0 {
        None
    } else {
        eprintln!("comparing what the collector stores with what was sent");
        Some(verify::verify(
            &target.http(),
            &nodes,
            args.verify_series_max,
            rec.newest_timestamp_ms.load(Relaxed),
        )?)
    };
    let samples_acked = rec.acked_samples.load(Relaxed);
    let store_bytes = target.data_dir().map_or(0, |d| process::du(&d));
    let store_parts = target
        .data_dir()
        .map(|d| process::du_parts(&d))
        .unwrap_or_default();
    let after_stop = match &mut target {
        Target::Managed(m) => {
            let load = process::loadavg()[0];
            let (took, killed) = m.stop(Stop::Term, args.stop_timeout)?;
            eprintln!(
                "clean stop: SIGTERM to exit {:.0} ms{} (load1 {load:.2} at the signal, {:.2} at the exit)",
                took.as_secs_f64() * 1000.0,
                if killed { ", killed" } else { "" },
                process::loadavg()[0]
            );
            Some((
                process::du(&m.data_dir),
                process::du_parts(&m.data_dir),
                took,
                killed,
            ))
        }
        _ => None,
    };

    // The steady window ends at the restart, if any.
    let (w0_s, w0_cpu, w0_samples, w0_own) =
        window_start.context("the run is shorter than its warm-up")?;
    let (w1_s, w1_cpu, w1_samples, w1_own) = match &restart_times {
        Some((_, (s, c), n, own)) => (*s, *c, *n, *own),
        None => (
            at_end.t_s,
            at_end.collector_cpu_s,
            at_end.acked_samples,
            own_end,
        ),
    };
    let secs = (w1_s - w0_s).max(1e-9);
    let samples = (w1_samples - w0_samples) as f64;
    let events = rec.events.lock().unwrap_or_else(|e| e.into_inner());
    let in_window = |ms: u32| (ms as f64) >= w0_s * 1000.0 && (ms as f64) <= w1_s * 1000.0;
    let window_acks: Vec<_> = events.acks.iter().filter(|a| in_window(a.at_ms)).collect();
    let window_points: Vec<&Point> = timeline
        .iter()
        .filter(|p| p.t_s >= w0_s && p.t_s <= w1_s)
        .collect();
    let queued_max = window_points.iter().map(|p| p.queued).max().unwrap_or(0);
    let slope_per_min = 60.0
        * report::slope(
            &window_points
                .iter()
                .map(|p| (p.t_s, p.queued as f64))
                .collect::<Vec<_>>(),
        );
    let queue_grew = slope_per_min * secs / 60.0 > (0.05 * args.shippers as f64).max(5.0);
    let lag_ms = report::pct(window_acks.iter().map(|a| a.lag_ms as f64).collect());
    let interval_ms = args.interval.as_secs_f64() * 1000.0;
    // A backlog from the first pushes (every series defined) may still be draining: whether
    // the collector keeps up is read at the window's end, over its last interval.
    let lag_last_interval_ms = report::pct(
        window_acks
            .iter()
            .filter(|a| a.at_ms as f64 >= w1_s * 1000.0 - interval_ms)
            .map(|a| a.lag_ms as f64)
            .collect(),
    );
    let steady = report::Steady {
        from_s: w0_s,
        to_s: w1_s,
        expected_samples_per_s: series_total as f64 / args.interval.as_secs_f64(),
        sustained_samples_per_s: samples / secs,
        pushes: window_acks.len(),
        push_latency_ms: report::pct(
            window_acks
                .iter()
                .filter_map(|a| a.latency_us)
                .map(|l| l as f64 / 1000.0)
                .collect(),
        ),
        keeps_up: !queue_grew
            && lag_last_interval_ms.n > 0
            && lag_last_interval_ms.max < interval_ms,
        lag_ms,
        lag_last_interval_ms,
        queued_max,
        queued_slope_per_min: slope_per_min,
        queue_grew,
        collector_cpu_cores: (w1_cpu - w0_cpu) / secs,
        collector_cpu_us_per_sample: (w1_cpu - w0_cpu) * 1e6 / samples.max(1.0),
        simulator_cpu_cores: (w1_own - w0_own) / secs,
    };
    let restart = restart_times
        .as_ref()
        .map(|(t, ..)| report::restart(&events, args.shippers, t, queued_max, &timeline));
    let loads: Vec<f64> = timeline.iter().map(|p| p.load1).collect();
    let report = Report {
        run: report::Run {
            shippers: args.shippers,
            interval_s: args.interval.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            connections,
            series_total,
            series_per_shipper_min: sizes.iter().copied().min().unwrap_or(0),
            series_per_shipper_mean: series_total as f64 / args.shippers as f64,
            series_per_shipper_max: sizes.iter().copied().max().unwrap_or(0),
            seed: args.seed,
            collector: match &target {
                Target::Managed(_) => "started by cluster-sim".into(),
                Target::External { pid, .. } => format!("external, pid {pid}"),
                Target::Prometheus(p, _) => {
                    format!("Prometheus by remote write, pid {}", p.pid())
                }
            },
        },
        load_before,
        load1_during_min: loads.iter().cloned().fold(f64::INFINITY, f64::min),
        load1_during_max: loads.iter().cloned().fold(0.0, f64::max),
        steady,
        footprint: report::Footprint {
            rss_idle_bytes: rss_idle,
            rss_peak_bytes: rss_peak,
            rss_end_bytes: rss_end,
            rss_bytes_per_series: rss_end as f64 / series_total as f64,
            rss_added_bytes_per_series: rss_end.saturating_sub(rss_idle) as f64
                / series_total as f64,
            samples_acked,
            store_bytes,
            store_bytes_per_sample: store_bytes as f64 / samples_acked.max(1) as f64,
            store_bytes_after_clean_stop: after_stop.as_ref().map(|a| a.0),
            store_bytes_per_sample_after_clean_stop: after_stop
                .as_ref()
                .map(|a| a.0 as f64 / samples_acked.max(1) as f64),
            store_parts,
            store_parts_after_clean_stop: after_stop.as_ref().map(|a| a.1.clone()),
            clean_stop_ms: after_stop.as_ref().map(|a| a.2.as_secs_f64() * 1000.0),
            clean_stop_killed: after_stop.as_ref().map(|a| a.3),
        },
        errors: report::errors(&events, rec.coalesced.load(Relaxed), unacked),
        restart,
        verification,
        timeline,
    };
    drop(events);
    let json = serde_json::to_string_pretty(&report)?;
    match args.json.as_deref() {
        Some("-") => println!("{json}"),
        Some(path) => {
            std::fs::write(path, &json)?;
            print!("{}", report.text());
        }
        None => print!("{}", report.text()),
    }
    rt.shutdown_background();
    if args.keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    let ok = report.verification.as_ref().is_none_or(|v| v.ok) && unacked == 0;
    if !ok {
        bail!("not every count was delivered exactly once (see above)");
    }
    Ok(())
}
