//! Screenshots of every view for the README (`docs/console-*.png`), from an in-process
//! collector that three simulated node shippers fed over gRPC with 20 minutes of history.
//! Not run by CI (ignored); regenerate with
//! `cargo test -p kappie-collector --test console -- --ignored screenshots`.

use super::browser::Chromium;
use super::common::InProcess;
use super::{now_ms, open, wait_for_chart, CHROMIUM};
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{
    CounterDelta, GaugeValue, HelloRequest, Label, MetricType, PushRequest, SeriesDefinition,
};
use std::path::Path;

/// Batches per shipper, one every 10 s of history.
const BATCHES: i64 = 120;

enum Kind {
    /// Counter deltas per batch for batch `i` (of node `n`).
    Counter(fn(usize, i64) -> f64),
    Gauge(fn(usize, i64) -> f64),
}

fn wave(n: usize, i: i64) -> f64 {
    1.0 + 0.45 * ((i as f64) / 9.0 + n as f64 * 1.7).sin() + 0.15 * ((i as f64) / 2.3).cos()
}

/// A series every simulated node has: metric, labels besides node_name and cluster, values.
type NodeSeries = (&'static str, Vec<(&'static str, &'static str)>, Kind);

fn node_series() -> Vec<NodeSeries> {
    use Kind::*;
    let fwd = |d: &'static str| vec![("direction", d)];
    let drop = |r: &'static str| vec![("direction", "ingress"), ("reason", r)];
    let remote = |a: &'static str, p: &'static str| vec![("address", a), ("port", p)];
    vec![
        (
            "kappie_forward_bytes",
            fwd("ingress"),
            Counter(|n, i| 9.0e6 * (n as f64 + 1.0) * wave(n, i)),
        ),
        (
            "kappie_forward_bytes",
            fwd("egress"),
            Counter(|n, i| 4.0e6 * (n as f64 + 1.0) * wave(n + 3, i)),
        ),
        (
            "kappie_forward_count",
            fwd("ingress"),
            Counter(|n, i| 9.0e3 * (n as f64 + 1.0) * wave(n, i)),
        ),
        (
            "kappie_forward_count",
            fwd("egress"),
            Counter(|n, i| 6.0e3 * (n as f64 + 1.0) * wave(n + 3, i)),
        ),
        (
            "kappie_drop_count",
            drop("NO_SOCKET"),
            Counter(|n, i| (40.0 * wave(n, i)).round()),
        ),
        (
            "kappie_drop_bytes",
            drop("NO_SOCKET"),
            Counter(|n, i| (40.0 * wave(n, i)).round() * 120.0),
        ),
        (
            "kappie_drop_count",
            drop("NETFILTER_DROP"),
            Counter(|n, i| {
                if (i / 20 + n as i64) % 3 == 0 {
                    90.0
                } else {
                    4.0
                }
            }),
        ),
        (
            "kappie_drop_bytes",
            drop("NETFILTER_DROP"),
            Counter(|n, i| {
                if (i / 20 + n as i64) % 3 == 0 {
                    90.0 * 80.0
                } else {
                    320.0
                }
            }),
        ),
        (
            "kappie_drop_count",
            drop("TCP_CSUM"),
            Counter(|_, i| if i % 17 == 0 { 2.0 } else { 0.0 }),
        ),
        (
            "kappie_drop_bytes",
            drop("TCP_CSUM"),
            Counter(|_, i| if i % 17 == 0 { 2.0 * 1400.0 } else { 0.0 }),
        ),
        (
            "kappie_interface_stats",
            vec![("interface_name", "eth0"), ("statistic_name", "rx_dropped")],
            Counter(|n, i| (3.0 * wave(n, i)).round()),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("10.0.12.4", "443"),
            Gauge(|n, i| (30.0 + 4.0 * n as f64 + 8.0 * wave(n, i)).round()),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("10.0.7.19", "5432"),
            Gauge(|n, _| 18.0 + n as f64),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("10.0.3.2", "6379"),
            Gauge(|n, i| (12.0 * wave(n + 1, i)).round()),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("172.16.0.10", "9092"),
            Gauge(|_, _| 9.0),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("10.96.0.10", "53"),
            Gauge(|n, i| (4.0 * wave(n, i)).round()),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("fd00:10::8", "8080"),
            Gauge(|_, _| 3.0),
        ),
        (
            "kappie_tcp_connection_remote",
            remote("other", ""),
            Gauge(|_, _| 41.0),
        ),
    ]
}

async fn simulate(grpc: String, n: usize, node: &'static str) {
    let mut cl = IngestClient::connect(grpc).await.unwrap();
    let id = format!("{node}-shipper");
    cl.hello(HelloRequest {
        shipper_id: id.clone(),
        session: 1,
        node_name: node.into(),
        cluster: "demo".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
    .await
    .unwrap();
    let series = node_series();
    let now = now_ms();
    for i in 1..=BATCHES {
        let definitions = if i == 1 {
            series
                .iter()
                .enumerate()
                .map(|(r, (metric, labels, kind))| SeriesDefinition {
                    r#ref: r as u32,
                    metric: (*metric).into(),
                    r#type: match kind {
                        Kind::Counter(_) => MetricType::Counter,
                        Kind::Gauge(_) => MetricType::Gauge,
                    } as i32,
                    labels: [("node_name", node), ("cluster", "demo")]
                        .iter()
                        .chain(labels)
                        .map(|(name, value)| Label {
                            name: (*name).into(),
                            value: (*value).into(),
                        })
                        .collect(),
                })
                .collect()
        } else {
            vec![]
        };
        let (mut deltas, mut gauges) = (vec![], vec![]);
        for (r, (_, _, kind)) in series.iter().enumerate() {
            match kind {
                Kind::Counter(f) => deltas.push(CounterDelta {
                    r#ref: r as u32,
                    delta: f(n, i),
                }),
                Kind::Gauge(f) => gauges.push(GaugeValue {
                    r#ref: r as u32,
                    value: f(n, i),
                    stale: false,
                }),
            }
        }
        cl.push(PushRequest {
            shipper_id: id.clone(),
            session: 1,
            sequence: i as u64,
            timestamp_ms: now - (BATCHES - i) * 10_000,
            definitions,
            deltas,
            gauges,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console-*.png; run by hand for the README"]
async fn screenshots_of_every_view_for_the_readme() {
    if !kappie_testkit::require(&[CHROMIUM]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = InProcess::start(dir.path()).await;
    for (n, node) in ["aks-system-0", "aks-user-1", "aks-user-2"]
        .into_iter()
        .enumerate()
    {
        simulate(collector.grpc_url(), n, node).await;
    }
    let base = collector.http_url();
    tokio::task::spawn_blocking(move || {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let mut c = Chromium::launch(None, None);
        let q =
            "sum by (node_name) (rate(kappie_drop_count{reason=\"NO_SOCKET\"}[$__rate_interval]))";
        let query = format!(
            "query?range=15m&q={}",
            form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        for (name, fragment, chart) in [
            (
                "overview",
                "overview?range=15m",
                "Forwarded bytes/s by direction",
            ),
            ("drops", "drops?range=15m", "Drops/s by reason"),
            ("nodes", "nodes?range=15m", "Forwarded bytes/s by node"),
            ("remotes", "remotes?range=15m", "Top 10 remotes over time"),
            ("query", query.as_str(), "Graph"),
        ] {
            open(&mut c, &base, fragment);
            wait_for_chart(&mut c, chart, 20);
            c.screenshot(&docs.join(format!("console-{name}.png")));
        }
    })
    .await
    .unwrap();
    collector.stop().await;
}
