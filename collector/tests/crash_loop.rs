//! The collector process under SIGKILL (issue 11): writers through remote write and through
//! gRPC push, data crossing chunk windows and a day block, late samples into compacted
//! windows, maintenance (cut, durable mark, log truncation, compaction, retention) every
//! second; the real `kappie-collector` is killed at a random moment of each round (so also
//! during maintenance) and started again on the same data directory. After every restart,
//! read back through remote read: every acknowledged sample is there bit for bit, a request
//! that was in flight is there wholly or not at all, and nothing appears twice (counter
//! totals built from push deltas are exact).
//!
//! `KAPPIE_CRASH_ROUNDS` sets the rounds (default 4, which CI runs). The stress figures in
//! docs/BENCHMARKS.md come from
//! `KAPPIE_CRASH_ROUNDS=200 cargo test --release -p kappie-collector --test crash_loop -- --nocapture`.

use kappie_proto::ingest_client::IngestClient;
use kappie_proto::prometheus::label_matcher::Type as MatchType;
use kappie_proto::{
    CounterDelta, GaugeValue, HelloRequest, Label, MetricType, PushRequest, PushStatus,
    SeriesDefinition,
};
use kappie_testkit::prometheus::{free_port, remote_read_samples, remote_write, series};
use kappie_testkit::{wait_for, Proc};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RW_SERIES: u64 = 60;
const PUSH_COUNTERS: u32 = 12;
const PUSH_GAUGES: u32 = 4;
const LATE_SAMPLES: i64 = 30;
const DAY_MS: i64 = 86_400_000;
/// A burst (issue 11's reproduction): 2,000 series, 12 requests of 30 samples at 10 s from
/// 4 minutes before an hour boundary, in every `BURST_EVERY`th round, starting with round 1.
const BURST_SERIES: u64 = 2_000;
const BURST_REQUESTS: u64 = 12;
const BURST_STEPS: u64 = 30;
const BURST_EVERY: usize = 40;
/// Time between requests of one writer (pacing, so that the synthetic clock stays in the
/// past for a few hundred rounds; no assertion depends on it).
const PACE: Duration = Duration::from_millis(15);

/// `(ms, value bits)` of one series.
type Samples = Vec<(i64, u64)>;
type LabelMap = BTreeMap<String, String>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Value of remote-write series `j` at request `k`: counters, floats with arbitrary
/// mantissas, small gauges and decimal steps, so both page encodings are exercised.
fn rw_value(j: u64, k: u64) -> f64 {
    match j % 4 {
        0 => (k * (j + 1) * 137 + mix(j) % 1000) as f64,
        1 => (mix(j << 32 | k) % 1_000_000_000) as f64 / 7.0,
        2 => (mix(j ^ k) % 20) as f64,
        _ => k as f64 * 0.1,
    }
}

fn push_delta(n: u64, r: u32) -> f64 {
    (mix(n << 8 | r as u64) % 5000) as f64
}

fn push_gauge(n: u64, g: u32) -> f64 {
    ((n * 31 + g as u64) % 50) as f64
}

/// What a writer has had acknowledged: units `0..acked` (requests, or batches `1..=acked`),
/// and whether the next one was in flight when the collector died (stored wholly or not).
#[derive(Default, Clone, Copy)]
struct Progress {
    acked: u64,
    in_flight: bool,
}

impl Progress {
    /// Takes what the store holds (`stored` units): it must be what was acknowledged, or
    /// one more when a unit was in flight; that one counts as acknowledged from now on.
    fn settle(&mut self, what: &str, stored: u64) {
        let ok = stored == self.acked || (self.in_flight && stored == self.acked + 1);
        assert!(
            ok,
            "{what}: the store holds {stored} units, {} were acknowledged{}",
            self.acked,
            if self.in_flight {
                " (one more in flight)"
            } else {
                ""
            }
        );
        self.acked = stored;
        self.in_flight = false;
    }
}

struct Model {
    base: i64,
    step: i64,
    /// Newest time any writer may use (the synthetic clock stays in the past).
    horizon: i64,
    rw: Progress,
    push: Progress,
    /// Late series by round: all samples or none, in the first window (long compacted).
    late: BTreeMap<u64, Progress>,
    /// Bursts, in requests.
    bursts: Vec<Progress>,
}

fn rw_time(m: &Model, k: u64) -> i64 {
    m.base + k as i64 * m.step
}

/// Time of step `k` of burst `b`: two hours apart, each starting 4 minutes before an
/// hour boundary (`base` is 10 minutes before one).
fn burst_time(base: i64, b: u64, k: u64) -> i64 {
    base + (b as i64 + 1) * 7_200_000 + 360_000 + k as i64 * 10_000
}

fn burst_value(j: u64, k: u64) -> f64 {
    (k * 1000 + j) as f64
}

/// Writes burst `b` and returns with the collector still running.
fn burst_writer(url: &str, m: &Model, b: u64, p: &mut Progress) {
    let name = b.to_string();
    for r in 0..BURST_REQUESTS {
        let req: Vec<_> = (0..BURST_SERIES)
            .map(|j| {
                let samples: Vec<(i64, f64)> = (r * BURST_STEPS..(r + 1) * BURST_STEPS)
                    .map(|k| (burst_time(m.base, b, k), burst_value(j, k)))
                    .collect();
                series(
                    &[
                        ("__name__", "crash_burst"),
                        ("burst", &name),
                        ("series", &j.to_string()),
                    ],
                    &samples,
                )
            })
            .collect();
        p.in_flight = true;
        remote_write(url, req).expect("burst request");
        p.acked += 1;
        p.in_flight = false;
    }
}

fn push_time(m: &Model, n: u64) -> i64 {
    m.base + 1 + n as i64 * m.step
}

/// Checks the store against the model after a restart and settles in-flight units.
fn verify(m: &mut Model, http: &str, round: usize) {
    let all = remote_read_samples(
        &format!("{http}/api/v1/read"),
        &[(MatchType::Re, "__name__", "crash_.+|kappie_.+")],
        0,
        now_ms() + DAY_MS,
    )
    .expect("remote read after restart");
    let mut by_name: BTreeMap<String, Vec<(LabelMap, Samples)>> = BTreeMap::new();
    for (labels, samples) in all {
        let l: LabelMap = labels.into_iter().collect();
        by_name
            .entry(l["__name__"].clone())
            .or_default()
            .push((l, samples));
    }

    // Remote write: every series holds requests 0..n, the same n for all (one commit).
    let rw = by_name.remove("crash_rw").unwrap_or_default();
    let n = rw.first().map_or(0, |s| s.1.len() as u64);
    if n > 0 {
        assert_eq!(
            rw.len() as u64,
            RW_SERIES,
            "round {round}: remote-write series"
        );
    }
    for (l, samples) in &rw {
        let j: u64 = l["series"].parse().unwrap();
        let want: Vec<(i64, u64)> = (0..n)
            .map(|k| (rw_time(m, k), rw_value(j, k).to_bits()))
            .collect();
        assert_eq!(samples, &want, "round {round}: remote-write series {j}");
    }
    m.rw.settle(&format!("round {round}: remote write"), n);

    // Late series: whole or absent.
    let late = by_name.remove("crash_late").unwrap_or_default();
    let mut seen = BTreeMap::new();
    for (l, samples) in &late {
        let r: u64 = l["round"].parse().unwrap();
        let want: Vec<(i64, u64)> = (0..LATE_SAMPLES)
            .map(|i| (m.base + i * m.step, (r as f64 + i as f64).to_bits()))
            .collect();
        assert_eq!(samples, &want, "round {round}: late series of round {r}");
        seen.insert(r, ());
    }
    for (r, p) in m.late.iter_mut() {
        p.settle(
            &format!("round {round}: late series {r}"),
            seen.contains_key(r) as u64,
        );
    }

    // Bursts: every series holds the same whole requests.
    let mut bursts: BTreeMap<u64, Vec<(u64, Samples)>> = BTreeMap::new();
    for (l, samples) in by_name.remove("crash_burst").unwrap_or_default() {
        bursts
            .entry(l["burst"].parse().unwrap())
            .or_default()
            .push((l["series"].parse().unwrap(), samples));
    }
    let base = m.base;
    for (b, p) in m.bursts.iter_mut().enumerate() {
        let got = bursts.remove(&(b as u64)).unwrap_or_default();
        let n = got.first().map_or(0, |s| s.1.len() as u64) / BURST_STEPS;
        if n > 0 {
            assert_eq!(
                got.len() as u64,
                BURST_SERIES,
                "round {round}: burst {b} series"
            );
        }
        for (j, samples) in &got {
            let want: Vec<(i64, u64)> = (0..n * BURST_STEPS)
                .map(|k| (burst_time(base, b as u64, k), burst_value(*j, k).to_bits()))
                .collect();
            assert!(
                samples == &want,
                "round {round}: burst {b} series {j} holds {} samples, not {} (the store lost acknowledged samples)",
                samples.len(),
                want.len()
            );
        }
        p.settle(&format!("round {round}: burst {b}"), n);
    }

    // Push: batches 1..=b applied exactly once (totals are running sums of the deltas).
    let counters = by_name
        .remove("kappie_tcp_connection_stats")
        .unwrap_or_default();
    let b = counters.first().map_or(0, |s| s.1.len() as u64);
    if b > 0 {
        assert_eq!(
            counters.len() as u32,
            PUSH_COUNTERS,
            "round {round}: counters"
        );
    }
    for (l, samples) in &counters {
        let r: u32 = l["statistic_name"]
            .trim_start_matches("Stat")
            .parse()
            .unwrap();
        let mut total = 0.0;
        let want: Vec<(i64, u64)> = (1..=b)
            .map(|n| {
                total += push_delta(n, r);
                (push_time(m, n), f64::to_bits(total))
            })
            .collect();
        assert_eq!(samples, &want, "round {round}: pushed counter {r}");
    }
    for (l, samples) in by_name.remove("kappie_tcp_state").unwrap_or_default() {
        let g: u32 = l["state"].trim_start_matches('S').parse().unwrap();
        let want: Vec<(i64, u64)> = (1..=b)
            .map(|n| (push_time(m, n), push_gauge(n, g).to_bits()))
            .collect();
        assert_eq!(samples, want, "round {round}: pushed gauge {g}");
    }
    m.push.settle(&format!("round {round}: push"), b);
    assert!(
        by_name.is_empty(),
        "round {round}: unexpected series {:?}",
        by_name.keys().collect::<Vec<_>>()
    );
}

/// Remote-write requests from `m.rw.acked` on until the collector dies.
fn rw_writer(url: String, mut m: Model, stop: Arc<AtomicBool>) -> Progress {
    while !stop.load(Ordering::SeqCst) {
        let k = m.rw.acked;
        let t = rw_time(&m, k);
        if t > m.horizon {
            break;
        }
        let req: Vec<_> = (0..RW_SERIES)
            .map(|j| {
                let name = j.to_string();
                series(
                    &[("__name__", "crash_rw"), ("series", &name)],
                    &[(t, rw_value(j, k))],
                )
            })
            .collect();
        m.rw.in_flight = true;
        match remote_write(&url, req) {
            Ok(()) => {
                m.rw.acked += 1;
                m.rw.in_flight = false;
            }
            Err(e) => {
                assert!(!e.contains("HTTP "), "remote write refused: {e}");
                break;
            }
        }
        std::thread::sleep(PACE);
    }
    m.rw
}

fn definitions() -> Vec<SeriesDefinition> {
    let def = |r: u32, metric: &str, kind: MetricType, l: (&str, String)| SeriesDefinition {
        r#ref: r,
        metric: metric.into(),
        r#type: kind as i32,
        labels: vec![
            Label {
                name: l.0.into(),
                value: l.1,
            },
            Label {
                name: "node_name".into(),
                value: "crash-node".into(),
            },
        ],
    };
    let mut d: Vec<SeriesDefinition> = (0..PUSH_COUNTERS)
        .map(|r| {
            def(
                r + 1,
                "kappie_tcp_connection_stats",
                MetricType::Counter,
                ("statistic_name", format!("Stat{r}")),
            )
        })
        .collect();
    d.extend((0..PUSH_GAUGES).map(|g| {
        def(
            PUSH_COUNTERS + g + 1,
            "kappie_tcp_state",
            MetricType::Gauge,
            ("state", format!("S{g}")),
        )
    }));
    d
}

/// gRPC pushes from batch `m.push.acked + 1` on until the collector dies; a new session
/// each round (as a restarted shipper), definitions in its first batch.
fn push_writer(grpc: String, mut m: Model, session: u64, stop: Arc<AtomicBool>) -> Progress {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let Ok(mut cl) = IngestClient::connect(grpc).await else {
            return m.push;
        };
        let hello = cl
            .hello(HelloRequest {
                shipper_id: "crash-node".into(),
                session,
                ..Default::default()
            })
            .await;
        let Ok(hello) = hello else { return m.push };
        assert_eq!(
            hello.into_inner().last_applied_sequence,
            m.push.acked,
            "hello after restart"
        );
        let mut first = true;
        while !stop.load(Ordering::SeqCst) {
            let n = m.push.acked + 1;
            let t = push_time(&m, n);
            if t > m.horizon {
                break;
            }
            let req = PushRequest {
                shipper_id: "crash-node".into(),
                session,
                sequence: n,
                timestamp_ms: t,
                definitions: if first { definitions() } else { vec![] },
                deltas: (0..PUSH_COUNTERS)
                    .map(|r| CounterDelta {
                        r#ref: r + 1,
                        delta: push_delta(n, r),
                    })
                    .collect(),
                gauges: (0..PUSH_GAUGES)
                    .map(|g| GaugeValue {
                        r#ref: PUSH_COUNTERS + g + 1,
                        value: push_gauge(n, g),
                        stale: false,
                    })
                    .collect(),
            };
            m.push.in_flight = true;
            match cl.push(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_eq!(r.status, PushStatus::Applied as i32, "batch {n}");
                    m.push.acked = n;
                    m.push.in_flight = false;
                    first = false;
                }
                Err(s) => {
                    use tonic::Code::*;
                    assert!(
                        !matches!(
                            s.code(),
                            InvalidArgument
                                | FailedPrecondition
                                | OutOfRange
                                | ResourceExhausted
                                | DataLoss
                                | AlreadyExists
                                | PermissionDenied
                                | Unauthenticated
                        ),
                        "push refused: {s}"
                    );
                    break;
                }
            }
            tokio::time::sleep(PACE).await;
        }
        m.push
    })
}

/// Writes this round's late series (and retries an earlier one not yet stored).
fn late_writer(url: String, mut m: Model, round: u64) -> BTreeMap<u64, Progress> {
    if round >= 1 {
        m.late.entry(round).or_default();
    }
    for (r, p) in m.late.iter_mut() {
        if p.acked == 1 {
            continue;
        }
        let samples: Vec<(i64, f64)> = (0..LATE_SAMPLES)
            .map(|i| (m.base + i * m.step, *r as f64 + i as f64))
            .collect();
        let name = r.to_string();
        p.in_flight = true;
        match remote_write(
            &url,
            vec![series(
                &[("__name__", "crash_late"), ("round", &name)],
                &samples,
            )],
        ) {
            Ok(()) => {
                p.acked = 1;
                p.in_flight = false;
            }
            Err(e) => {
                assert!(!e.contains("HTTP "), "late remote write refused: {e}");
                break;
            }
        }
    }
    m.late
}

impl Model {
    fn snapshot(&self) -> Model {
        Model {
            base: self.base,
            step: self.step,
            horizon: self.horizon,
            rw: self.rw,
            push: self.push,
            late: self.late.clone(),
            bursts: self.bursts.clone(),
        }
    }
}

fn start_collector(dir: &Path, round: usize, maintenance_s: u64) -> (Proc, String, String) {
    let http_port = free_port();
    let grpc_port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kappie-collector"));
    cmd.args([
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "--http-listen",
        &format!("127.0.0.1:{http_port}"),
        "--grpc-listen",
        &format!("127.0.0.1:{grpc_port}"),
        "--maintenance-interval-seconds",
        &maintenance_s.to_string(),
        // Every stored series is checked against what was acknowledged.
        "--self-scrape-interval-seconds",
        "0",
    ])
    .env("RUST_LOG", "info");
    let proc = Proc::spawn(
        "kappie-collector",
        cmd,
        &dir.join(format!("collector-{round}.log")),
    );
    let http = format!("http://127.0.0.1:{http_port}");
    wait_for("the collector to be ready", Duration::from_secs(60), || {
        ureq::get(&format!("{http}/-/ready"))
            .call()
            .ok()
            .filter(|r| r.status() == 200)
    });
    (proc, http, format!("http://127.0.0.1:{grpc_port}"))
}

/// Windows compacted, and of those compacted again (late samples), as the collector logs
/// of rounds `0..=last` say.
fn count_compactions(dir: &Path, last: usize) -> (usize, usize) {
    let (mut all, mut again) = (0, 0);
    for round in 0..=last {
        let log =
            std::fs::read_to_string(dir.join(format!("collector-{round}.log"))).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("compacted chunk window")) {
            all += 1;
            if !l.contains("gen=1 ") {
                again += 1;
            }
        }
    }
    (all, again)
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_sample() {
    let rounds: usize = std::env::var("KAPPIE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let seed = rand::random::<u64>();
    eprintln!("crash loop: {rounds} rounds, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Ten minutes before the start of yesterday: the data crosses a day block and its
    // first chunk window is long over (compacted as soon as no head chunk is in it).
    let base = now_ms().div_euclid(DAY_MS) * DAY_MS - DAY_MS - 600_000;
    let horizon = now_ms() - 30 * 60_000;
    // At most about 100 requests a round per writer; at most 10 s apart.
    let step = ((horizon - base) / (rounds as i64 * 100)).clamp(1_000, 10_000);
    let mut m = Model {
        base,
        step,
        horizon,
        rw: Progress::default(),
        push: Progress::default(),
        late: BTreeMap::new(),
        bursts: Vec::new(),
    };
    let mut killed_during_maintenance = 0;
    for round in 0..rounds {
        // Burst rounds run without maintenance, so nothing flushes the staging databases
        // but sled itself (the way acknowledged samples were lost in issue 11).
        let burst = round % BURST_EVERY == 1;
        let (proc, http, grpc) = start_collector(dir.path(), round, if burst { 3600 } else { 1 });
        verify(&mut m, &http, round);

        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{http}/api/v1/write");
        let rw = {
            let (url, m, stop) = (url.clone(), m.snapshot(), stop.clone());
            std::thread::spawn(move || rw_writer(url, m, stop))
        };
        let push = {
            let (m, stop) = (m.snapshot(), stop.clone());
            std::thread::spawn(move || push_writer(grpc, m, round as u64 + 1, stop))
        };
        let late = {
            let (url, m) = (url.clone(), m.snapshot());
            std::thread::spawn(move || late_writer(url, m, round as u64))
        };
        if burst {
            // Killed right after the burst's last acknowledgement.
            let mut p = Progress::default();
            burst_writer(&url, &m, m.bursts.len() as u64, &mut p);
            m.bursts.push(p);
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(300..2000)));
        }
        let log = std::fs::read_to_string(dir.path().join(format!("collector-{round}.log")))
            .unwrap_or_default();
        // A kill right after "compacted" or while a window is being compacted is a kill
        // during maintenance; counted for the report only.
        if log.lines().last().is_some_and(|l| l.contains("compact")) {
            killed_during_maintenance += 1;
        }
        proc.kill9();
        stop.store(true, Ordering::SeqCst);
        m.rw = rw.join().expect("remote-write writer");
        m.push = push.join().expect("push writer");
        m.late = late.join().expect("late writer");
        eprintln!(
            "round {round}: remote write {} requests acked, push {} batches, {} late series",
            m.rw.acked,
            m.push.acked,
            m.late.values().filter(|p| p.acked == 1).count()
        );
    }
    // The last restart is checked too; then that collector runs until it has compacted a
    // window at least once in the whole loop, is killed, and is checked once more.
    let (proc, http, _) = start_collector(dir.path(), rounds, 1);
    verify(&mut m, &http, rounds);
    wait_for("a compaction", Duration::from_secs(60), || {
        (count_compactions(dir.path(), rounds).0 > 0).then_some(())
    });
    proc.kill9();
    let (proc, http, _) = start_collector(dir.path(), rounds + 1, 1);
    verify(&mut m, &http, rounds + 1);
    drop(proc);

    let (compactions, recompactions) = count_compactions(dir.path(), rounds + 1);
    let days: std::collections::BTreeSet<i64> = ["blocks", "staging"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(dir.path().join("data").join(d))
                .into_iter()
                .flatten()
        })
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.split('-').next()?.parse::<i64>().ok()
        })
        .map(|t| t.div_euclid(DAY_MS))
        .collect();
    eprintln!(
        "crash loop: {rounds} SIGKILLs ({killed_during_maintenance} right after a compaction log line); \
         {} remote-write requests, {} push batches, {} late series acknowledged; \
         {compactions} windows compacted ({recompactions} of them again, for late samples); \
         data in {} day blocks; synthetic step {step} ms",
        m.rw.acked,
        m.push.acked,
        m.late.len(),
        days.len()
    );
    assert!(
        m.rw.acked > 0 && m.push.acked > 0,
        "the writers got nothing acknowledged"
    );
    assert!(
        compactions > 0,
        "no chunk window was compacted during the loop"
    );
    assert!(
        days.len() >= 2,
        "the data did not cross a day block: {days:?}"
    );
}
