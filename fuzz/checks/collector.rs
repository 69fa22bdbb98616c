//! The checks behind the collector fuzz targets, shared as source (`#[path]`) by the
//! targets in `fuzz/fuzz_targets/` and by the stable regression tests in
//! `collector/tests/fuzz_regressions.rs`. A check panics exactly when the fuzzer should
//! report a crash; `Err` is always a fine answer to hostile input.

use kappie_collector::api::write::decode_write_request;
use kappie_collector::promql::{instant_query, range_query, QueryLimits};
use kappie_storage::{Appender, Labels, Storage, StorageConfig, STALE_NAN_BITS};
use std::path::Path;
use std::time::Duration;

/// The collector's default `--max-remote-write-bytes`.
const MAX_REMOTE_WRITE_BYTES: usize = 32 << 20;

/// A remote write body decodes and validates, or is refused, never a panic; every series
/// accepted has a metric name. The bytes also go in snappy-compressed, so that the
/// protobuf decoding and the label checks see them directly.
///
/// The collector decodes in place (`api::write::wire`); prost's generated decoder with
/// `Labels::new`, what it did before, must agree: the same series, or both refuse (with the
/// same message when a label set is refused).
pub fn remote_write(data: &[u8]) {
    let compressed = snap::raw::Encoder::new()
        .compress_vec(data)
        .expect("snappy compresses any input");
    let limits = kappie_collector::limits::LabelLimits::default();
    for body in [data, &compressed] {
        let ours = decode_write_request(body, MAX_REMOTE_WRITE_BYTES, &limits);
        let reference = remote_write_reference(body, &limits);
        match (ours, reference) {
            (Ok(batch), Ok(series)) => {
                let ours: Vec<DecodedSeries> = batch
                    .series()
                    .map(|(enc, s)| (Labels::decode(enc).expect("valid encoding"), s.to_vec()))
                    .collect();
                for (labels, _) in &ours {
                    assert!(labels.get("__name__").is_some(), "series without a name");
                }
                assert_eq!(ours.len(), series.len(), "series count");
                for ((l, s), (rl, rs)) in ours.iter().zip(&series) {
                    assert_eq!(l, rl, "label set");
                    let bits = |s: &[(i64, f64)]| -> Vec<(i64, u64)> {
                        s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
                    };
                    assert_eq!(bits(s), bits(rs), "samples of {l:?}");
                }
            }
            (Err(e), Err(r)) => {
                assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
                let kind = |m: &str| m.split(':').next().unwrap_or("").to_owned();
                if r.starts_with("protobuf decode error") {
                    assert!(
                        e.message().starts_with("protobuf decode error"),
                        "{} vs {r}",
                        e.message()
                    );
                } else if r.starts_with("series ") {
                    assert_eq!(e.message(), r);
                } else {
                    assert_eq!(kind(e.message()), kind(&r), "{} vs {r}", e.message());
                }
            }
            (Ok(_), Err(r)) => panic!("accepted a body prost's decoder refuses: {r}"),
            (Err(e), Ok(_)) => panic!("refused a body prost's decoder accepts: {}", e.message()),
        }
    }
}

/// A decoded series: its labels and samples.
type DecodedSeries = (Labels, Vec<(i64, f64)>);

/// Remote write decoding as the collector did it with prost's generated decoder (until
/// 2026-12-02): the reference the in-place decoder is held to.
fn remote_write_reference(
    body: &[u8],
    limits: &kappie_collector::limits::LabelLimits,
) -> Result<Vec<DecodedSeries>, String> {
    use prost::Message;
    let raw = kappie_collector::api::write::decompress(body, MAX_REMOTE_WRITE_BYTES)
        .map_err(|e| e.message().to_owned())?;
    let req = kappie_proto::prometheus::WriteRequest::decode(raw.as_slice())
        .map_err(|e| format!("protobuf decode error: {e}"))?;
    let mut series = Vec::with_capacity(req.timeseries.len());
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        let labels = Labels::new(ts.labels.into_iter().map(|l| (l.name, l.value)))
            .map_err(|e| format!("series {i}: {e}"))?;
        if labels.get("__name__").is_none() {
            return Err(format!("series {i} has no __name__ label"));
        }
        limits
            .check(&labels)
            .map_err(|e| format!("series {i}: {e}"))?;
        series.push((
            labels,
            ts.samples
                .into_iter()
                .map(|s| (s.timestamp, s.value))
                .collect(),
        ));
    }
    Ok(series)
}

/// Evaluation time of the fuzzed queries (ms): the end of the samples of [`promql_store`].
pub const PROMQL_T: i64 = 1_800_000;

/// Labels of a series and its value at step `i` (15 s apart).
type SeriesDef = (&'static [(&'static str, &'static str)], fn(i64) -> f64);

/// A store in `dir` with a few small series of every kind of value: counters with a
/// reset, a gauge with NaN, ±Inf and a stale marker, histogram buckets.
pub fn promql_store(dir: &Path) -> Storage {
    let store = Storage::open(dir, &fuzz_config()).expect("open store");
    let mut app = store.appender();
    let series: [SeriesDef; 6] = [
        (
            &[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("instance", "a"),
            ],
            |i| (i * 10) as f64,
        ),
        (
            &[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("instance", "b"),
            ],
            |i| ((i % 40) * 3) as f64,
        ),
        (&[("__name__", "node_temp"), ("node", "x")], |i| {
            match i % 10 {
                3 => f64::NAN,
                5 => f64::INFINITY,
                6 => f64::NEG_INFINITY,
                9 => f64::from_bits(STALE_NAN_BITS),
                _ => 20.0 + i as f64 / 7.0,
            }
        }),
        (&[("__name__", "up"), ("job", "api")], |_| 1.0),
        (&[("__name__", "lat_bucket"), ("le", "0.1")], |i| i as f64),
        (&[("__name__", "lat_bucket"), ("le", "+Inf")], |i| {
            (2 * i) as f64
        }),
    ];
    for (labels, value) in series {
        let labels = Labels::new(labels.iter().copied()).expect("labels");
        for i in 0..=120 {
            app.append(&labels, i * 15_000, value(i)).expect("append");
        }
    }
    app.commit().expect("commit");
    store
}

/// A UTF-8 query parses and evaluates (instant and over a short range) against
/// [`promql_store`], or fails, never a panic.
pub fn promql(store: &Storage, data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    // Tight limits keep a slow query (a subquery of millions of steps) from stalling the
    // fuzzer and the debug-build replay; the limits' own error paths are exercised too.
    let limits = QueryLimits {
        timeout: Duration::from_secs(2),
        max_samples: 200_000,
        ..QueryLimits::default()
    };
    let _ = instant_query(store, query, PROMQL_T, &limits);
    let _ = range_query(store, query, PROMQL_T - 600_000, PROMQL_T, 60_000, &limits);
}

/// Reads a fuzz input as a stream of choices; past its end every choice is 0.
pub struct Choices<'a>(&'a [u8]);

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Choices(data)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn byte(&mut self) -> u8 {
        let Some((b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *b
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, _| (v << 8) | u64::from(self.byte()))
    }
    /// One of `words`, or (past them) a string of up to 15 bytes taken from the input.
    pub fn word(&mut self, words: &[&str]) -> String {
        let b = self.byte();
        if let Some(w) = words.get(usize::from(b) % (words.len() + 1)) {
            return (*w).to_owned();
        }
        let n = usize::from(self.byte() % 16).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
    /// A counter delta or gauge value: mostly plain, sometimes hostile.
    pub fn value(&mut self) -> f64 {
        match self.byte() % 8 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => -1.0,
            3 => f64::from_bits(self.u64()),
            4 => 0.0,
            b => f64::from(b) * 1000.0,
        }
    }
}

/// What the collector may answer a shipper's call with. Anything else (`INTERNAL`,
/// `UNKNOWN`, `DATA_LOSS`, `UNAVAILABLE` from a healthy store) is a bug.
fn expected_code(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument | OutOfRange | FailedPrecondition | ResourceExhausted
    )
}

/// The gRPC ingest service over a store in `dir`, with small limits so that fuzzing
/// reaches them.
fn ingest_service(store: &Storage) -> kappie_collector::ingest::IngestService {
    let shippers = kappie_collector::shippers::Inventory::load(store).expect("load inventory");
    kappie_collector::ingest::IngestService::new(
        store.clone(),
        kappie_collector::ingest::IngestLimits {
            max_series_per_shipper: 6,
            max_future_skew_ms: 300_000,
            labels: kappie_collector::limits::LabelLimits {
                max_labels: 4,
                max_name_bytes: 12,
                max_value_bytes: 12,
            },
            max_concurrency: 2,
        },
        std::sync::Arc::new(shippers),
        Default::default(),
    )
}

/// A sequence of Hello and Push calls built from `data`, against the real ingest service
/// over a fresh store (shippers' authentication off, as on loopback). Every call answers
/// or is refused with an expected code; sequence numbers behave exactly once (a push
/// above the last applied sequence is applied, at or below it is a duplicate, Hello tells
/// the last applied one); after the store is closed and opened again, Hello tells the
/// same sequences (what was acknowledged is durable).
pub fn grpc_ingest(data: &[u8]) {
    use kappie_proto::ingest_server::Ingest;
    use kappie_proto::{
        CounterDelta, GaugeValue, HelloRequest, Label, PushRequest, PushStatus, SeriesDefinition,
    };
    use std::collections::BTreeMap;
    use tonic::Request;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // On tmpfs where there is one: each input opens a store twice, and fsyncs cost nothing
    // there, so the fuzzer runs many times faster.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    const SHIPPERS: [&str; 2] = ["node-a", "node-b"];
    const METRICS: [&str; 3] = [
        "kappie_forward_count",
        "kappie_drop_count",
        "kappie_tcp_state",
    ];
    const LABELS: [&str; 4] = ["node_name", "direction", "reason", "__name__"];
    let mut c = Choices::new(data);
    // Last applied sequence per shipper id, as the collector must remember it.
    let mut applied: BTreeMap<String, u64> = BTreeMap::new();
    {
        let store = Storage::open(dir.path(), &fuzz_config()).expect("open store");
        let svc = ingest_service(&store);
        for _ in 0..24 {
            if c.is_empty() {
                break;
            }
            let shipper = c.word(&SHIPPERS);
            let last = applied.get(&shipper).copied().unwrap_or(0);
            let session = u64::from(c.byte() % 3);
            if c.byte().is_multiple_of(4) {
                let req = HelloRequest {
                    shipper_id: shipper.clone(),
                    session,
                    node_name: shipper.clone(),
                    cluster: c.word(&["c1"]),
                    version: "fuzz".into(),
                };
                match rt.block_on(svc.hello(Request::new(req))) {
                    Ok(r) => assert_eq!(
                        r.get_ref().last_applied_sequence,
                        last,
                        "Hello told shipper {shipper:?} a wrong last applied sequence"
                    ),
                    Err(st) => assert!(expected_code(st.code()), "Hello: {st:?}"),
                }
                continue;
            }
            let sequence = match c.byte() % 6 {
                0 => 0,
                1 => last,
                2 => c.u64(),
                _ => last + 1,
            };
            let timestamp_ms = match c.byte() % 6 {
                0 => 0,
                1 => now + 3_600_000,
                2 => c.u64() as i64,
                _ => now - 1000,
            };
            let mut req = PushRequest {
                shipper_id: shipper.clone(),
                session,
                sequence,
                timestamp_ms,
                ..Default::default()
            };
            for _ in 0..c.byte() % 4 {
                let r#ref = u32::from(c.byte() % 8);
                let metric = c.word(&METRICS);
                let r#type = i32::from(c.byte() % 4);
                let mut labels = vec![Label {
                    name: "node_name".into(),
                    value: shipper.clone(),
                }];
                for _ in 0..c.byte() % 6 {
                    labels.push(Label {
                        name: c.word(&LABELS),
                        value: c.word(&["egress", "ingress", "NO_SOCKET"]),
                    });
                }
                req.definitions.push(SeriesDefinition {
                    r#ref,
                    metric,
                    r#type,
                    labels,
                });
            }
            for _ in 0..c.byte() % 6 {
                req.deltas.push(CounterDelta {
                    r#ref: u32::from(c.byte() % 8),
                    delta: c.value(),
                });
            }
            for _ in 0..c.byte() % 3 {
                req.gauges.push(GaugeValue {
                    r#ref: u32::from(c.byte() % 8),
                    value: c.value(),
                    stale: c.byte().is_multiple_of(5),
                });
            }
            match rt.block_on(svc.push(Request::new(req))) {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.status == PushStatus::Applied as i32 {
                        assert!(
                            sequence > last,
                            "batch {sequence} of {shipper:?} applied at or below {last}"
                        );
                        assert_eq!(r.last_applied_sequence, sequence);
                        applied.insert(shipper, sequence);
                    } else {
                        assert_eq!(r.status, PushStatus::Duplicate as i32, "status {r:?}");
                        assert!(
                            sequence <= last,
                            "batch {sequence} of {shipper:?} above {last} called a duplicate"
                        );
                        assert_eq!(r.last_applied_sequence, last);
                    }
                }
                Err(st) => assert!(expected_code(st.code()), "Push: {st:?}"),
            }
        }
    }
    // Everything acknowledged survives closing and opening the store.
    let store = Storage::open(dir.path(), &fuzz_config()).expect("reopen store");
    let svc = ingest_service(&store);
    for (shipper, last) in applied {
        let req = HelloRequest {
            shipper_id: shipper.clone(),
            session: 99,
            node_name: "n".into(),
            ..Default::default()
        };
        let r = rt
            .block_on(svc.hello(Request::new(req)))
            .expect("Hello after reopening");
        assert_eq!(
            r.get_ref().last_applied_sequence,
            last,
            "after reopening the store, shipper {shipper:?}'s acknowledged batches are lost"
        );
    }
}

/// The HTTP API's state over `store` for [`remote_read`], with small limits so that fuzzing
/// reaches them: 2,000 samples per SAMPLES response, frames cut at 512 bytes.
pub fn remote_read_state(store: &Storage) -> kappie_collector::api::ApiState {
    use kappie_collector::api::{ApiLimits, ApiState, RemoteReadLimits};
    ApiState {
        store: store.clone(),
        limits: ApiLimits {
            labels: Default::default(),
            max_concurrent_requests: 4,
            request_timeout: Duration::from_secs(30),
            max_remote_write_bytes: MAX_REMOTE_WRITE_BYTES,
            query: QueryLimits::default(),
            remote_read: RemoteReadLimits {
                max_request_bytes: 1 << 20,
                max_samples: 2_000,
                max_frame_bytes: 512,
                response_types: vec![0, 1],
            },
        },
        query_stats: Default::default(),
        remote_write: Default::default(),
        remote_read_gate: std::sync::Arc::new(tokio::sync::Semaphore::new(4)),
        shippers: std::sync::Arc::new(
            kappie_collector::shippers::Inventory::load(store).expect("load inventory"),
        ),
        auth: None,
    }
}

/// The runtime [`remote_read`] answers on (one worker, as a small collector has).
pub fn remote_read_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A remote read request (`data` snappy-compressed as a client sends it, and `data` as the
/// body itself) against [`promql_store`]: 200 or 400, never a panic or a 500. A 200 is
/// well formed: SAMPLES has one result per query, every sample inside its query's range,
/// every series matching the query's equality matchers; STREAMED_XOR_CHUNKS frames carry
/// their CRC and name a query of the request.
pub fn remote_read(
    rt: &tokio::runtime::Runtime,
    state: &kappie_collector::api::ApiState,
    data: &[u8],
) {
    use axum::extract::State;
    use kappie_proto::prometheus as pb;
    use prost::Message;

    let compressed = snap::raw::Encoder::new()
        .compress_vec(data)
        .expect("snappy compresses any input");
    for body in [&compressed[..], data] {
        let resp = rt.block_on(kappie_collector::remote::read::remote_read(
            State(state.clone()),
            axum::body::Bytes::copy_from_slice(body),
        ));
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = rt
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .expect("the whole response, streamed or not");
        assert!(
            status == 200 || status == 400,
            "remote read answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status != 200 {
            continue;
        }
        let raw = snap::raw::Decoder::new()
            .decompress_vec(body)
            .expect("a request answered 200 decompresses");
        let req = pb::ReadRequest::decode(raw.as_slice()).expect("a request answered 200 decodes");
        if content_type == "application/x-protobuf" {
            let out = snap::raw::Decoder::new()
                .decompress_vec(&bytes)
                .expect("SAMPLES response is snappy");
            let out = pb::ReadResponse::decode(out.as_slice()).expect("SAMPLES response decodes");
            assert_eq!(out.results.len(), req.queries.len(), "one result per query");
            for (q, r) in req.queries.iter().zip(&out.results) {
                for ts in &r.timeseries {
                    for s in &ts.samples {
                        assert!(
                            (q.start_timestamp_ms..=q.end_timestamp_ms).contains(&s.timestamp),
                            "sample at {} outside {}..={}",
                            s.timestamp,
                            q.start_timestamp_ms,
                            q.end_timestamp_ms
                        );
                    }
                    for m in &q.matchers {
                        let v = ts
                            .labels
                            .iter()
                            .find(|l| l.name == m.name)
                            .map_or("", |l| l.value.as_str());
                        match m.r#type {
                            0 => assert_eq!(v, m.value, "series {:?} fails {m:?}", ts.labels),
                            1 => assert_ne!(v, m.value, "series {:?} fails {m:?}", ts.labels),
                            _ => {}
                        }
                    }
                }
            }
        } else {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let mut len = 0u64;
                let mut shift = 0;
                loop {
                    let (b, r) = rest.split_first().expect("frame length");
                    rest = r;
                    len |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                let (crc, r) = rest.split_at(4);
                let (frame, r) = r.split_at(len as usize);
                rest = r;
                assert_eq!(
                    u32::from_be_bytes(crc.try_into().expect("4 bytes")),
                    crc32c::crc32c(frame),
                    "frame CRC"
                );
                let f = pb::ChunkedReadResponse::decode(frame).expect("frame decodes");
                assert!(
                    (0..req.queries.len() as i64).contains(&f.query_index),
                    "frame names query {} of {}",
                    f.query_index,
                    req.queries.len()
                );
            }
        }
    }
}

/// The store's defaults without a preallocated log: a zero-filled spare segment per
/// input would take most of the fuzzer's time (the replay of zeros is still fuzzed: they are
/// whatever bytes the input holds).
fn fuzz_config() -> StorageConfig {
    StorageConfig {
        wal_preallocate: false,
        ..StorageConfig::default()
    }
}
