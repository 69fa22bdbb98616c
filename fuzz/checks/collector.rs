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
pub fn remote_write(data: &[u8]) {
    let compressed = snap::raw::Encoder::new()
        .compress_vec(data)
        .expect("snappy compresses any input");
    for body in [data, &compressed] {
        if let Ok(series) = decode_write_request(
            body,
            MAX_REMOTE_WRITE_BYTES,
            &kappie_collector::limits::LabelLimits::default(),
        ) {
            for (labels, _) in &series {
                assert!(labels.get("__name__").is_some(), "series without a name");
            }
        }
    }
}

/// Evaluation time of the fuzzed queries (ms): the end of the samples of [`promql_store`].
pub const PROMQL_T: i64 = 1_800_000;

/// Labels of a series and its value at step `i` (15 s apart).
type SeriesDef = (&'static [(&'static str, &'static str)], fn(i64) -> f64);

/// A store in `dir` with a few small series of every kind of value: counters with a
/// reset, a gauge with NaN, ±Inf and a stale marker, histogram buckets.
pub fn promql_store(dir: &Path) -> Storage {
    let store = Storage::open(dir, &StorageConfig::default()).expect("open store");
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
