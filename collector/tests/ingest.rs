//! gRPC ingest over loopback against a real sled store: exactly-once delivery, restarts and
//! bad input.

mod common;

use common::InProcess;
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{
    CounterDelta, GaugeValue, HelloRequest, Label, MetricType, PushRequest, PushResponse,
    PushStatus, SeriesDefinition,
};
use kappie_storage::{MatchOp, Matcher, Querier, Storage};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Code;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

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

fn batch(session: u64, seq: u64, t: i64, delta: f64, with_defs: bool) -> PushRequest {
    PushRequest {
        shipper_id: "node-a".into(),
        session,
        sequence: seq,
        timestamp_ms: t,
        definitions: if with_defs {
            vec![
                def(
                    1,
                    "kappie_tcp_connection_stats",
                    MetricType::Counter,
                    &[("statistic_name", "InSegs"), ("node_name", "node-a")],
                ),
                def(
                    2,
                    "kappie_udp_active_sockets",
                    MetricType::Gauge,
                    &[("node_name", "node-a")],
                ),
            ]
        } else {
            vec![]
        },
        deltas: vec![CounterDelta { r#ref: 1, delta }],
        gauges: vec![GaugeValue {
            r#ref: 2,
            value: seq as f64,
            stale: false,
        }],
    }
}

/// Every stored sample of every series, for "nothing changed" comparisons.
fn everything(store: &Storage) -> Vec<kappie_storage::Series> {
    let all = Matcher::new(MatchOp::Regex, "__name__", ".+").unwrap();
    store.select(&[all], i64::MIN, i64::MAX).unwrap()
}

fn total(store: &Storage) -> f64 {
    let m = Matcher::new(MatchOp::Equal, "statistic_name", "InSegs").unwrap();
    let s = store.select(&[m], i64::MIN, i64::MAX).unwrap();
    assert_eq!(s.len(), 1);
    s[0].samples.last().unwrap().v
}

async fn client(c: &InProcess) -> IngestClient<tonic::transport::Channel> {
    IngestClient::connect(c.grpc_url()).await.unwrap()
}

#[tokio::test]
async fn duplicate_batch_counts_once_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let mut cl = client(&c).await;
    let t0 = now_ms() - 10_000;
    let hello = cl
        .hello(HelloRequest {
            shipper_id: "node-a".into(),
            session: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.last_applied_sequence, 0);

    let r = cl
        .push(batch(7, 1, t0, 5.0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r,
        PushResponse {
            status: PushStatus::Applied as i32,
            last_applied_sequence: 1
        }
    );
    let r = cl
        .push(batch(7, 1, t0, 5.0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        PushStatus::Duplicate as i32,
        "the same batch again changes nothing"
    );
    let store = c.running.as_ref().unwrap().store.clone();
    assert_eq!(total(&store), 5.0);
    let r = cl
        .push(batch(7, 2, t0 + 1000, 3.0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, PushStatus::Applied as i32);
    assert_eq!(total(&store), 8.0);
    drop(store);
    drop(cl);
    c.stop().await;

    // Restart on the same data dir: the retried batch 2 is a duplicate, batch 3 applies and
    // the counter total continues (a new shipper session too).
    let c = InProcess::start(dir.path()).await;
    let mut cl = client(&c).await;
    let hello = cl
        .hello(HelloRequest {
            shipper_id: "node-a".into(),
            session: 9,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.last_applied_sequence, 2);
    let store = c.running.as_ref().unwrap().store.clone();
    let before = everything(&store);
    let r = cl
        .push(batch(7, 2, t0 + 1000, 3.0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, PushStatus::Duplicate as i32);
    assert_eq!(everything(&store), before);
    let r = cl
        .push(batch(9, 3, t0 + 2000, 4.0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, PushStatus::Applied as i32);
    assert_eq!(
        total(&store),
        12.0,
        "totals stay monotonic across shipper sessions and collector restarts"
    );

    // The query API sees the same.
    let http = c.http_url();
    let v = tokio::task::spawn_blocking(move || {
        common::query(
            &http,
            "kappie_tcp_connection_stats{statistic_name=\"InSegs\"}",
        )
    })
    .await
    .unwrap();
    assert_eq!(common::single_value(&v), Some(12.0), "{v}");
    let http = c.http_url();
    let metrics = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("{http}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        metrics.lines().any(|l| l == "kappie_storage_series 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kappie_storage_samples_refused_total{reason=\"out_of_order\"} 0"),
        "{metrics}"
    );
    drop(cl);
    c.stop().await;
}

#[tokio::test]
async fn undefined_series_asks_for_definitions_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let mut cl = client(&c).await;
    let t0 = now_ms() - 10_000;
    cl.push(batch(1, 1, t0, 1.0, true)).await.unwrap();
    let store = c.running.as_ref().unwrap().store.clone();
    let before = everything(&store);

    // A new session that never defined ref 1 and 2.
    let err = cl
        .push(batch(2, 2, t0 + 1000, 1.0, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("has not defined"),
        "{}",
        err.message()
    );
    assert_eq!(err.metadata().get("kappie-define-series").unwrap(), "1,2");
    assert_eq!(everything(&store), before);
    // The same batch with definitions goes through, still as sequence 2.
    let r = cl
        .push(batch(2, 2, t0 + 1000, 1.0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, PushStatus::Applied as i32);
    assert_eq!(total(&store), 2.0);
    c.stop().await;
}

#[tokio::test]
async fn invalid_batches_get_clear_statuses_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let mut cl = client(&c).await;
    let t0 = now_ms() - 10_000;
    cl.push(batch(1, 1, t0, 1.0, true)).await.unwrap();
    let store = c.running.as_ref().unwrap().store.clone();
    let before = everything(&store);

    let mut cases: Vec<(&str, PushRequest, Code)> = Vec::new();
    let mut b = batch(1, 2, t0, -1.0, false);
    cases.push(("negative delta", b.clone(), Code::InvalidArgument));
    b = batch(1, 2, t0, f64::NAN, false);
    cases.push(("NaN delta", b.clone(), Code::InvalidArgument));
    b = batch(1, 2, t0, 1.0, false);
    b.definitions = vec![def(3, "bad-name", MetricType::Gauge, &[])];
    cases.push(("bad metric name", b.clone(), Code::InvalidArgument));
    b.definitions = vec![def(3, "ok", MetricType::Gauge, &[("__x", "1")])];
    cases.push(("reserved label", b.clone(), Code::InvalidArgument));
    b.definitions = vec![def(3, "ok", MetricType::Gauge, &[("a", "1"), ("a", "2")])];
    cases.push(("duplicate label", b.clone(), Code::InvalidArgument));
    b.definitions = vec![def(1, "other", MetricType::Counter, &[])];
    cases.push(("redefined ref", b.clone(), Code::InvalidArgument));
    b = batch(1, 2, t0, 1.0, false);
    b.gauges = vec![GaugeValue {
        r#ref: 1,
        value: 1.0,
        stale: false,
    }];
    cases.push(("gauge value on a counter", b.clone(), Code::InvalidArgument));
    b = batch(1, 2, now_ms() + 3_600_000, 1.0, false);
    cases.push(("timestamp an hour ahead", b.clone(), Code::OutOfRange));
    b = batch(1, 0, t0, 1.0, false);
    cases.push(("sequence 0", b.clone(), Code::InvalidArgument));
    b = batch(1, 2, t0, 1.0, false);
    b.shipper_id = String::new();
    cases.push(("no shipper id", b.clone(), Code::InvalidArgument));
    // Label limits (issue 16): defaults of 4096-byte values and 64 labels.
    b = batch(1, 2, t0, 1.0, false);
    let long = "v".repeat(4097);
    b.definitions = vec![def(3, "ok", MetricType::Gauge, &[("a", &long)])];
    cases.push(("a 4097-byte label value", b.clone(), Code::InvalidArgument));
    let names: Vec<String> = (0..64).map(|i| format!("l{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    b.definitions = vec![def(3, "ok", MetricType::Gauge, &many)];
    cases.push(("65 labels with __name__", b.clone(), Code::InvalidArgument));
    b = batch(1, 2, t0, 1.0, false);
    b.definitions = (10..100_020)
        .map(|r| def(r, "kappie_x", MetricType::Gauge, &[("i", &r.to_string())]))
        .collect();
    cases.push(("too many series", b, Code::ResourceExhausted));

    for (what, req, code) in cases {
        let err = cl.push(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty());
        assert_eq!(everything(&store), before, "{what} changed stored data");
    }

    // Bytes that are not a PushRequest at all.
    let err = raw_push(&c.grpc_url(), vec![0x0a, 0xff, 0xff, 0xff])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Internal,
        "gRPC maps parse errors to INTERNAL"
    );
    assert!(err.message().contains("decode"), "{}", err.message());
    assert_eq!(everything(&store), before);

    // The shipper's sequence was not advanced by any of it.
    let r = cl
        .push(batch(1, 2, t0 + 1000, 1.0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, PushStatus::Applied as i32);
    c.stop().await;
}

/// A definition sent again in its session with its labels in another order (and an
/// empty-valued label, which a label set drops) is the same series, not a redefinition:
/// definitions are compared by their encoded label sets since the collector stopped
/// keeping decoded ones (issue 15); a different value still is a redefinition.
#[tokio::test]
async fn a_definition_sent_again_in_another_label_order_is_the_same_series() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let mut cl = client(&c).await;
    let t0 = now_ms() - 10_000;
    cl.push(batch(1, 1, t0, 1.0, true)).await.unwrap();
    let mut b = batch(1, 2, t0 + 1000, 2.0, false);
    b.definitions = vec![def(
        1,
        "kappie_tcp_connection_stats",
        MetricType::Counter,
        &[
            ("node_name", "node-a"),
            ("zone", ""),
            ("statistic_name", "InSegs"),
        ],
    )];
    let r = cl.push(b.clone()).await.unwrap().into_inner();
    assert_eq!(r.status, PushStatus::Applied as i32);
    let store = c.running.as_ref().unwrap().store.clone();
    assert_eq!(total(&store), 3.0);
    assert_eq!(everything(&store).len(), 2, "no new series");

    b.sequence = 3;
    b.definitions[0].labels[0].value = "node-b".into();
    let err = cl.push(b).await.expect_err("a different label value");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    c.stop().await;
}

/// Sends arbitrary bytes as the body of `Ingest/Push`.
async fn raw_push(url: &str, body: Vec<u8>) -> Result<PushResponse, tonic::Status> {
    use tonic::codec::{Codec, EncodeBuf, Encoder};

    struct Raw;
    struct RawEncoder;
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = PushResponse;
        type Encoder = RawEncoder;
        type Decoder = tonic_prost::ProstDecoder<PushResponse>;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::default()
        }
    }

    let ch = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/kappie.v1.Ingest/Push");
    g.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(|r| r.into_inner())
}

/// Shippers' pushes are applied side by side (each shipper's own one at a time). Two
/// shippers may still define the same counter label set; its running total must then take
/// every shipper's increases, none lost to a push that read the total while another one
/// was applying its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_shippers_sharing_a_counter_lose_no_increase() {
    const SHIPPERS: u64 = 8;
    const BATCHES: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let t0 = now_ms() - 600_000;
    let shipper_batch = |i: u64, seq: u64, t: i64| {
        let node = format!("node-{i}");
        PushRequest {
            shipper_id: node.clone(),
            session: 1,
            sequence: seq,
            timestamp_ms: t,
            definitions: vec![
                def(
                    1,
                    "kappie_tcp_connection_stats",
                    MetricType::Counter,
                    &[("statistic_name", "InSegs"), ("node_name", &node)],
                ),
                // The same label set from every shipper.
                def(
                    2,
                    "kappie_tcp_connection_stats",
                    MetricType::Counter,
                    &[("statistic_name", "Shared")],
                ),
            ],
            deltas: vec![
                CounterDelta {
                    r#ref: 1,
                    delta: 1.0,
                },
                CounterDelta {
                    r#ref: 2,
                    delta: 1.0,
                },
            ],
            gauges: vec![],
        }
    };
    let mut tasks = Vec::new();
    for i in 0..SHIPPERS {
        let url = c.grpc_url();
        tasks.push(tokio::spawn(async move {
            let mut cl = IngestClient::connect(url).await.unwrap();
            for seq in 1..=BATCHES {
                let t = t0 + (seq as i64) * 1000 + i as i64;
                let r = cl
                    .push(shipper_batch(i, seq, t))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.status, PushStatus::Applied as i32);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The shared series' samples from pushes that committed out of time order were refused,
    // but its running total holds every increase: one more push shows it.
    let mut cl = client(&c).await;
    let last = t0 + (BATCHES as i64 + 1) * 1000;
    let mut b = shipper_batch(0, BATCHES + 1, last);
    b.deltas[1].delta = 0.0;
    cl.push(b).await.unwrap();
    let store = c.running.as_ref().unwrap().store.clone();
    let value_at = |stat: &str, node: Option<&str>, t: i64| {
        let mut m = vec![Matcher::new(MatchOp::Equal, "statistic_name", stat).unwrap()];
        if let Some(n) = node {
            m.push(Matcher::new(MatchOp::Equal, "node_name", n).unwrap());
        }
        let s = store.select(&m, i64::MIN, i64::MAX).unwrap();
        assert_eq!(s.len(), 1, "{stat} {node:?}");
        let last = s[0].samples.last().unwrap();
        assert_eq!(last.t, t, "{stat} {node:?}");
        last.v
    };
    assert_eq!(
        value_at("Shared", None, last),
        (SHIPPERS * BATCHES) as f64,
        "every shipper's increase of the shared counter"
    );
    for i in 0..SHIPPERS {
        let node = format!("node-{i}");
        let t = t0 + (BATCHES as i64) * 1000 + i as i64;
        let t = if i == 0 { last } else { t };
        let want = if i == 0 { BATCHES + 1 } else { BATCHES } as f64;
        assert_eq!(value_at("InSegs", Some(&node), t), want, "{node}");
    }
    c.stop().await;
}
