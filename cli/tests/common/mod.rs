//! Shared helpers of the CLI's tests: a real `kappie-collector` process on loopback ports
//! with its data in a temp dir, kappie-shaped data written into it by Prometheus remote
//! write, shipper sessions over gRPC, and the `kappie` binary run against it.
#![allow(dead_code)] // each test file uses a different subset

use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{
    GaugeValue, HelloRequest, Label, MetricType, PushRequest, PushStatus, SeriesDefinition,
};
pub use kappie_testkit::prometheus::series;
use kappie_testkit::prometheus::{free_port, remote_write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The `kappie-collector` binary of this target directory (`target/debug/`, the
/// grandparent of `target/debug/deps/<test>`). `cargo test -p kappie-cli` does not build
/// it: a dev-dependency builds the library only.
pub fn collector_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join("kappie-collector");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p kappie-collector` (same \
         CARGO_TARGET_DIR and profile), or run `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A collector process; killed on drop with its temp dir removed.
pub struct Collector {
    pub http: String,
    pub grpc: String,
    pub dir: tempfile::TempDir,
    _proc: kappie_testkit::Proc,
}

impl Collector {
    /// A collector with `args` added, on free loopback ports, ready.
    pub fn start(args: &[&str]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, free_port(), args)
    }

    /// A collector in `dir` whose HTTP API listens on `http_port`, ready.
    pub fn start_in(dir: tempfile::TempDir, http_port: u16, args: &[&str]) -> Collector {
        let grpc_port = free_port();
        let mut cmd = Command::new(collector_bin());
        cmd.args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(args)
            .env("RUST_LOG", "info");
        let log = dir.path().join("collector.log");
        let mut proc = kappie_testkit::Proc::spawn("kappie-collector", cmd, &log);
        let http = format!("http://127.0.0.1:{http_port}");
        kappie_testkit::wait_for("the collector to be ready", Duration::from_secs(60), || {
            // A collector that exited (a port taken between free_port and its bind, say)
            // fails the test at once, with its log, instead of after the timeout.
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "the collector exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            ureq::get(&format!("{http}/-/ready")).call().ok()
        });
        Collector {
            http,
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            dir,
            _proc: proc,
        }
    }

    /// Remote-writes `series` (bearer `token` when the API wants one).
    pub fn write(&self, data: Vec<kappie_proto::prometheus::TimeSeries>) {
        remote_write(&format!("{}/api/v1/write", self.http), data).expect("remote write");
    }
}

/// Seconds between samples of the fixture.
pub const STEP_S: i64 = 10;

/// A counter's metric name, labels and rate per second.
pub type Counter = (&'static str, &'static [(&'static str, &'static str)], f64);

/// Counters of the fixture: labels and their rate in units per second. Each increases at
/// that rate from a large base (so `rate()` never extrapolates to below zero) every 10 s
/// from 10 minutes ago to 4 minutes ahead, so a `[5m]` window ending at any moment of the
/// test has a sample within one interval of each end and `rate()` is exactly the slope.
#[rustfmt::skip]
pub const COUNTERS: &[Counter] = &[
    ("kappie_forward_bytes", &[("node_name", "node-a"), ("direction", "ingress")], 1500.0),
    ("kappie_forward_bytes", &[("node_name", "node-a"), ("direction", "egress")], 600.0),
    ("kappie_forward_bytes", &[("node_name", "node-b"), ("direction", "ingress")], 250_000.0),
    ("kappie_forward_bytes", &[("node_name", "node-b"), ("direction", "egress")], 40.0),
    ("kappie_forward_bytes", &[("node_name", "node-c"), ("direction", "ingress")], 12_000.0),
    ("kappie_forward_bytes", &[("node_name", "node-c"), ("direction", "egress")], 3000.0),
    ("kappie_forward_count", &[("node_name", "node-a"), ("direction", "ingress")], 10.0),
    ("kappie_forward_count", &[("node_name", "node-a"), ("direction", "egress")], 5.0),
    ("kappie_forward_count", &[("node_name", "node-b"), ("direction", "ingress")], 350.0),
    ("kappie_forward_count", &[("node_name", "node-b"), ("direction", "egress")], 1.0),
    ("kappie_forward_count", &[("node_name", "node-c"), ("direction", "ingress")], 20.0),
    ("kappie_forward_count", &[("node_name", "node-c"), ("direction", "egress")], 8.0),
    ("kappie_drop_count", &[("node_name", "node-a"), ("reason", "NO_SOCKET"), ("direction", "ingress")], 5.0),
    ("kappie_drop_count", &[("node_name", "node-b"), ("reason", "NETFILTER_DROP"), ("direction", "egress")], 2.0),
    ("kappie_drop_count", &[("node_name", "node-a"), ("reason", "TCP_CSUM"), ("direction", "ingress")], 0.5),
    ("kappie_drop_count", &[("node_name", "node-c"), ("reason", "NO_SOCKET"), ("direction", "ingress")], 0.25),
    ("kappie_drop_bytes", &[("node_name", "node-a"), ("reason", "NO_SOCKET"), ("direction", "ingress")], 300.0),
    ("kappie_drop_bytes", &[("node_name", "node-b"), ("reason", "NETFILTER_DROP"), ("direction", "egress")], 3000.0),
    ("kappie_drop_bytes", &[("node_name", "node-a"), ("reason", "TCP_CSUM"), ("direction", "ingress")], 50.0),
    ("kappie_drop_bytes", &[("node_name", "node-c"), ("reason", "NO_SOCKET"), ("direction", "ingress")], 20.0),
    ("kappie_interface_stats", &[("node_name", "node-a"), ("interface_name", "eth0"), ("statistic_name", "rx_bytes")], 2000.0),
    ("kappie_interface_stats", &[("node_name", "node-a"), ("interface_name", "eth0"), ("statistic_name", "tx_bytes")], 1000.0),
    ("kappie_interface_stats", &[("node_name", "node-a"), ("interface_name", "eth0"), ("statistic_name", "rx_errors")], 0.1),
    ("kappie_interface_stats", &[("node_name", "node-a"), ("interface_name", "eth0"), ("statistic_name", "tx_errors")], 0.0),
    ("kappie_interface_stats", &[("node_name", "node-a"), ("interface_name", "eth0"), ("statistic_name", "rx_dropped")], 0.5),
    ("kappie_interface_stats", &[("node_name", "node-a"), ("interface_name", "eth0"), ("statistic_name", "tx_dropped")], 0.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "eth0"), ("statistic_name", "rx_bytes")], 100_000.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "eth0"), ("statistic_name", "tx_bytes")], 50_000.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "eth0"), ("statistic_name", "rx_errors")], 0.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "eth0"), ("statistic_name", "tx_errors")], 0.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "eth0"), ("statistic_name", "rx_dropped")], 2.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "eth0"), ("statistic_name", "tx_dropped")], 0.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "lxc12ab"), ("statistic_name", "rx_bytes")], 10.0),
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "lxc12ab"), ("statistic_name", "tx_bytes")], 20.0),
    // Counted, but not a statistic the interfaces view shows.
    ("kappie_interface_stats", &[("node_name", "node-b"), ("interface_name", "lxc12ab"), ("statistic_name", "multicast")], 1e6),
    ("kappie_tcp_connection_stats", &[("node_name", "node-a"), ("statistic_name", "DelayedACKs")], 3.0),
];

/// Gauges of the fixture: socket counts per remote (`other` is the shipper's bucket for
/// the rest, which the remotes view leaves out).
#[rustfmt::skip]
pub const REMOTES: &[(&str, &str, &str, f64)] = &[
    ("node-a", "192.0.2.10", "443", 7.0),
    ("node-b", "192.0.2.10", "443", 5.0),
    ("node-c", "198.51.100.7", "5432", 9.0),
    ("node-a", "198.51.100.7", "5432", 1.0),
    ("node-b", "2001:db8::1", "80", 3.0),
    ("node-a", "other", "0", 100.0),
];

/// The cluster of the fixture's nodes.
pub const CLUSTER: &str = "prod";

/// The fixture's series in `cluster`, samples from 10 minutes before `now_ms` to 4 minutes
/// after it.
pub fn fixture(now_ms: i64) -> Vec<kappie_proto::prometheus::TimeSeries> {
    let t0 = now_ms - 600_000;
    let times: Vec<i64> = (0..=(840 / STEP_S))
        .map(|i| t0 + i * STEP_S * 1000)
        .collect();
    let mut out = Vec::new();
    for (metric, labels, rate) in COUNTERS {
        let mut l: Vec<(&str, &str)> = vec![("__name__", metric), ("cluster", CLUSTER)];
        l.extend_from_slice(labels);
        let samples: Vec<(i64, f64)> = times
            .iter()
            .map(|&t| (t, 1e9 + rate * ((t - t0) / 1000) as f64))
            .collect();
        out.push(series(&l, &samples));
    }
    for (node, address, port, v) in REMOTES {
        let l = [
            ("__name__", "kappie_tcp_connection_remote"),
            ("cluster", CLUSTER),
            ("node_name", node),
            ("address", address),
            ("port", port),
        ];
        let samples: Vec<(i64, f64)> = times.iter().map(|&t| (t, *v)).collect();
        out.push(series(&l, &samples));
    }
    out
}

/// A collector holding the fixture.
pub fn collector_with_fixture() -> Collector {
    let c = Collector::start(&[]);
    c.write(fixture(now_ms()));
    c
}

/// What a `kappie` run printed and its exit code.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout's lines with runs of blanks made one, for comparing rows exactly without
    /// depending on column widths (the unit tests pin the alignment).
    pub fn rows(&self) -> Vec<String> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// The `kappie` binary with none of its settings taken from this environment.
pub fn kappie_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kappie"));
    for var in [
        "KAPPIE_SERVER",
        "KAPPIE_TOKEN",
        "KAPPIE_TOKEN_FILE",
        "KAPPIE_USER",
        "KAPPIE_CLUSTER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `kappie --server server args…`.
pub fn kappie(server: &str, args: &[&str]) -> Run {
    run(kappie_command().args(["--server", server]).args(args))
}

pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run kappie");
    Run {
        code: out
            .status
            .code()
            .expect("kappie exited (not killed by a signal)"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A shipper session as the tests drive it.
pub struct Shipper {
    pub id: &'static str,
    pub node: &'static str,
    pub version: &'static str,
}

/// Says Hello as `s` and pushes `batches` batches, each defining and setting one gauge
/// (a metric the views do not read, so the fixture's rates stay exact); each must be
/// acknowledged as applied.
pub fn report(grpc: &str, s: &Shipper, batches: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cl = IngestClient::connect(grpc.to_owned()).await.unwrap();
        let last = cl
            .hello(HelloRequest {
                shipper_id: s.id.into(),
                session: 1,
                node_name: s.node.into(),
                cluster: CLUSTER.into(),
                version: s.version.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .last_applied_sequence;
        assert_eq!(last, 0, "{} is new", s.id);
        for seq in 1..=batches {
            let r = cl
                .push(PushRequest {
                    shipper_id: s.id.into(),
                    session: 1,
                    sequence: seq,
                    timestamp_ms: now_ms(),
                    definitions: vec![SeriesDefinition {
                        r#ref: 1,
                        metric: "kappie_udp_active_sockets".into(),
                        r#type: MetricType::Gauge as i32,
                        labels: vec![Label {
                            name: "node_name".into(),
                            value: s.node.into(),
                        }],
                    }],
                    deltas: vec![],
                    gauges: vec![GaugeValue {
                        r#ref: 1,
                        value: seq as f64,
                        stale: false,
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.status, PushStatus::Applied as i32, "{} batch {seq}", s.id);
        }
    });
}
