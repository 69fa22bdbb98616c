//! The shipper inventory (issue 12): `GET /api/v1/kappie/shippers` and
//! `kappie_shipper_last_push_timestamp_seconds` after real gRPC Hellos and pushes over
//! loopback into a real store, the inventory after a SIGKILL and restart, and the
//! collector's logs in a file.

mod common;

use common::InProcess;
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{
    CounterDelta, GaugeValue, HelloRequest, Label, MetricType, PushRequest, PushStatus,
    SeriesDefinition,
};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A shipper as these tests drive it.
struct Node {
    id: &'static str,
    node: &'static str,
    cluster: &'static str,
    session: u64,
}

const VERSION: &str = "0.7.1-test";
/// Series each batch defines and samples each batch carries: two counters and a gauge.
const SERIES: u64 = 3;

fn def(r: u32, metric: &str, kind: MetricType, labels: &[(&str, &str)]) -> SeriesDefinition {
    SeriesDefinition {
        r#ref: r,
        metric: metric.into(),
        r#type: kind as i32,
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
    }
}

fn batch(n: &Node, seq: u64, t: i64) -> PushRequest {
    let node = ("node_name", n.node);
    PushRequest {
        shipper_id: n.id.into(),
        session: n.session,
        sequence: seq,
        timestamp_ms: t,
        definitions: vec![
            def(
                1,
                "kappie_forward_count",
                MetricType::Counter,
                &[node, ("direction", "ingress")],
            ),
            def(
                2,
                "kappie_forward_count",
                MetricType::Counter,
                &[node, ("direction", "egress")],
            ),
            def(3, "kappie_udp_active_sockets", MetricType::Gauge, &[node]),
        ],
        deltas: vec![
            CounterDelta {
                r#ref: 1,
                delta: 5.0,
            },
            CounterDelta {
                r#ref: 2,
                delta: 7.0,
            },
        ],
        gauges: vec![GaugeValue {
            r#ref: 3,
            value: seq as f64,
            stale: false,
        }],
    }
}

/// Collector-clock bounds (ms) of what a shipper did.
#[derive(Debug, Clone, Copy)]
struct Window {
    hello: (i64, i64),
    last_push: (i64, i64),
}

/// Says Hello as `n` and pushes `batches` batches, each acknowledged as applied.
async fn report(grpc: &str, n: &Node, batches: u64) -> Window {
    let mut cl = IngestClient::connect(grpc.to_owned()).await.unwrap();
    let before = now_ms();
    let last = cl
        .hello(HelloRequest {
            shipper_id: n.id.into(),
            session: n.session,
            node_name: n.node.into(),
            cluster: n.cluster.into(),
            version: VERSION.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .last_applied_sequence;
    let hello = (before, now_ms());
    assert_eq!(last, 0, "{} is new", n.id);
    let t0 = now_ms() - 60_000;
    let mut last_push = (0, 0);
    for seq in 1..=batches {
        let before = now_ms();
        let r = cl
            .push(batch(n, seq, t0 + seq as i64 * 1000))
            .await
            .unwrap()
            .into_inner();
        last_push = (before, now_ms());
        assert_eq!(r.status, PushStatus::Applied as i32, "{} batch {seq}", n.id);
    }
    Window { hello, last_push }
}

/// `GET url` as (status, body), off the async runtime.
async fn get(url: String, token: Option<&'static str>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::get(&url);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("{url}: {e}"),
        }
    })
    .await
    .unwrap()
}

/// The inventory's `data`, checked to be in the success envelope.
async fn shippers(http: &str) -> Vec<Value> {
    let (code, body) = get(format!("{http}/api/v1/kappie/shippers"), None).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"].as_array().expect("data is an array").clone()
}

/// Milliseconds of a time as the API writes it, `YYYY-MM-DDTHH:MM:SS.mmmZ` (checked).
fn rfc3339_ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let b = s.as_bytes();
    assert!(
        s.len() == 24
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z',
        "not RFC 3339 UTC with milliseconds: {s}"
    );
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    (days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000 + n(20..23)
}

fn within(what: &str, t: i64, (lo, hi): (i64, i64)) {
    assert!(lo <= t && t <= hi, "{what} {t} is not within [{lo}, {hi}]");
}

/// Field names and types of one inventory entry, and its identity.
fn check_entry(e: &Value, n: &Node, last_sequence: u64) {
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cluster",
            "lastPushAgeSeconds",
            "lastPushTime",
            "lastSequence",
            "nodeName",
            "samplesLastMinute",
            "series",
            "sessionStart",
            "shipperId",
            "version"
        ],
        "{e}"
    );
    assert_eq!(e["shipperId"], n.id, "{e}");
    assert_eq!(e["nodeName"], n.node, "{e}");
    assert_eq!(e["cluster"], n.cluster, "{e}");
    assert_eq!(e["version"], VERSION, "{e}");
    assert_eq!(e["lastSequence"], last_sequence, "{e}");
}

// Ids chosen so that the order by node name differs from the order by shipper id.
const A: Node = Node {
    id: "shipper-z",
    node: "node-a",
    cluster: "prod-eu",
    session: 11,
};
const B: Node = Node {
    id: "shipper-a",
    node: "node-b",
    cluster: "lab \"b\"\\2\nx",
    session: 22,
};

#[tokio::test]
async fn lists_each_shipper_with_what_it_sent() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    assert_eq!(shippers(&c.http_url()).await, Vec::<Value>::new());
    let wa = report(&c.grpc_url(), &A, 2).await;
    let wb = report(&c.grpc_url(), &B, 3).await;
    let asked = now_ms();
    let list = shippers(&c.http_url()).await;
    let answered = now_ms();

    assert_eq!(list.len(), 2, "{list:?}");
    for (e, n, batches, w) in [(&list[0], &A, 2, wa), (&list[1], &B, 3, wb)] {
        check_entry(e, n, batches);
        assert_eq!(e["series"], SERIES, "{e}");
        assert_eq!(e["samplesLastMinute"], SERIES * batches, "{e}");
        within("sessionStart", rfc3339_ms(&e["sessionStart"]), w.hello);
        let pushed = rfc3339_ms(&e["lastPushTime"]);
        within("lastPushTime", pushed, w.last_push);
        let age_ms = (e["lastPushAgeSeconds"].as_f64().unwrap() * 1000.0).round() as i64;
        within(
            "lastPushAgeSeconds",
            age_ms,
            (asked - pushed, answered - pushed),
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn metrics_have_a_last_push_gauge_per_shipper() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    report(&c.grpc_url(), &A, 1).await;
    report(&c.grpc_url(), &B, 2).await;
    let list = shippers(&c.http_url()).await;
    let (code, text) = get(format!("{}/metrics", c.http_url()), None).await;
    assert_eq!(code, 200);

    assert!(text.lines().any(|l| l == "kappie_shippers 2"), "{text}");
    assert!(
        text.contains("# TYPE kappie_shipper_last_push_timestamp_seconds gauge\n"),
        "{text}"
    );
    // B's cluster has a quote, a backslash and a newline, escaped as the text format says.
    for (e, labels) in [
        (
            &list[0],
            r#"shipper_id="shipper-z",node_name="node-a",cluster="prod-eu""#,
        ),
        (
            &list[1],
            r#"shipper_id="shipper-a",node_name="node-b",cluster="lab \"b\"\\2\nx""#,
        ),
    ] {
        let prefix = format!("kappie_shipper_last_push_timestamp_seconds{{{labels}}} ");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "{prefix} in\n{text}");
        let seconds: f64 = lines[0][prefix.len()..].parse().unwrap();
        assert_eq!(
            (seconds * 1000.0).round() as i64,
            rfc3339_ms(&e["lastPushTime"]),
            "{}",
            lines[0]
        );
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("kappie_shipper_last_push_timestamp_seconds{"))
            .count(),
        2,
        "{text}"
    );
    c.stop().await;
}

/// The collector writes its own metrics into its store, so "which node stopped reporting"
/// is one PromQL query against the collector itself.
#[tokio::test(flavor = "multi_thread")]
async fn silent_nodes_are_one_promql_query_away() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start_with(kappie_collector::Config {
        data_dir: dir.path().to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        self_scrape_interval_seconds: 1,
        self_scrape_instance: "collector-test".into(),
        ..kappie_collector::Config::default()
    })
    .await;
    let a = report(&c.grpc_url(), &A, 1).await;
    let query = |q: &'static str| {
        let url = format!("{}/api/v1/query", c.http_url());
        async move {
            tokio::task::spawn_blocking(move || {
                let body = ureq::get(&url)
                    .query("query", q)
                    .call()
                    .unwrap()
                    .into_string()
                    .unwrap();
                let v: Value = serde_json::from_str(&body).unwrap();
                v["data"]["result"].as_array().unwrap().clone()
            })
            .await
            .unwrap()
        }
    };
    let q = r#"time() - kappie_shipper_last_push_timestamp_seconds{job="kappie-collector"} >= 0"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let found = loop {
        let r = query(q).await;
        if !r.is_empty() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    let m = &found[0]["metric"];
    assert_eq!(m["node_name"], A.node);
    assert_eq!(m["shipper_id"], A.id);
    assert_eq!(m["instance"], "collector-test");
    // The stored value is the push time the inventory reports.
    let stored =
        query(r#"kappie_shipper_last_push_timestamp_seconds{job="kappie-collector"}"#).await;
    let secs: f64 = stored[0]["value"][1].as_str().unwrap().parse().unwrap();
    within(
        "stored last push",
        (secs * 1000.0).round() as i64,
        a.last_push,
    );
    // And the collector's other figures are there the same way.
    let series =
        query(r#"kappie_storage_series{job="kappie-collector",instance="collector-test"}"#).await;
    assert_eq!(series.len(), 1, "{series:?}");
    c.stop().await;
}

#[tokio::test]
async fn the_inventory_asks_for_the_api_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "inventory-token\n").unwrap();
    let c = InProcess::start_with(kappie_collector::Config {
        data_dir: dir.path().join("data"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_auth_token_file: Some(token_file),
        self_scrape_interval_seconds: 0,
        ..kappie_collector::Config::default()
    })
    .await;
    let url = format!("{}/api/v1/kappie/shippers", c.http_url());
    assert_eq!(get(url.clone(), None).await.0, 401);
    let (code, body) = get(url, Some("inventory-token")).await;
    assert_eq!(code, 200, "{body}");
    c.stop().await;
}

/// The real collector process with its stderr and stdout in `log`, ready.
async fn start_process(
    data: &std::path::Path,
    log: &std::path::Path,
    args: &'static [&'static str],
) -> (kappie_testkit::Proc, String, String) {
    let (data, log) = (data.to_owned(), log.to_owned());
    tokio::task::spawn_blocking(move || {
        let (proc, http, grpc) = common::collector_process(&data, &log, args);
        common::wait_ready(&http);
        (proc, http, grpc)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_inventory_survives_a_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (proc, http, grpc) = start_process(&data, &dir.path().join("1.log"), &[]).await;
    report(&grpc, &A, 2).await;
    report(&grpc, &B, 3).await;
    let before = shippers(&http).await;
    let (_, metrics_before) = get(format!("{http}/metrics"), None).await;
    // Acknowledged pushes are durable: no clean shutdown.
    proc.kill9();

    let (proc, http, _) = start_process(&data, &dir.path().join("2.log"), &[]).await;
    let after = shippers(&http).await;
    assert_eq!(after.len(), 2, "{after:?}");
    for ((a, b), (n, batches)) in after.iter().zip(&before).zip([(&A, 2), (&B, 3)]) {
        check_entry(a, n, batches);
        assert_eq!(a["lastPushTime"], b["lastPushTime"], "{a} / {b}");
        assert_eq!(a["sessionStart"], b["sessionStart"], "{a} / {b}");
        // Kept in memory only: nothing has arrived since the restart.
        assert_eq!(a["series"], 0, "{a}");
        assert_eq!(a["samplesLastMinute"], 0, "{a}");
    }
    let (_, metrics_after) = get(format!("{http}/metrics"), None).await;
    let gauges = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("kappie_shipper_last_push_timestamp_seconds{"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(gauges(&metrics_after).len(), 2, "{metrics_after}");
    assert_eq!(gauges(&metrics_after), gauges(&metrics_before));
    proc.kill9();
}

/// Waits until the log at `path` has a line with `needle`; returns the whole log.
fn wait_for_log(path: &std::path::Path, needle: &str) -> Vec<u8> {
    kappie_testkit::wait_for(
        &format!("{needle:?} in {}", path.display()),
        Duration::from_secs(30),
        || {
            let b = std::fs::read(path).ok()?;
            String::from_utf8_lossy(&b).contains(needle).then_some(b)
        },
    )
}

#[tokio::test]
async fn text_logs_in_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("collector.log");
    let (proc, _, grpc) = start_process(&dir.path().join("data"), &log, &[]).await;
    report(&grpc, &A, 1).await;
    let b = wait_for_log(&log, "shipper session started");
    let text = String::from_utf8_lossy(&b);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !b.contains(&0x1b),
        "ESC (a colour code) in the log:\n{text}"
    );
    proc.kill9();
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("collector.log");
    let args = &["--log-format", "json"];
    let (proc, _, grpc) = start_process(&dir.path().join("data"), &log, args).await;
    report(&grpc, &A, 1).await;
    let b = wait_for_log(&log, "shipper session started");
    let text = String::from_utf8_lossy(&b);
    // The line that says where the collector serves is on stdout, in the same file.
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.starts_with("kappie-collector: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let hello = events
        .iter()
        .find(|e| e["fields"]["message"] == "shipper session started")
        .unwrap_or_else(|| panic!("no Hello event in\n{text}"));
    assert_eq!(hello["level"], "INFO", "{hello}");
    assert_eq!(hello["fields"]["shipper"], A.id, "{hello}");
    assert!(!b.contains(&0x1b), "ESC in the log:\n{text}");
    proc.kill9();
}
