//! `/metrics`: the collector's self-metrics, gathered as typed families (crate::telemetry)
//! that the self-scrape also writes into the store.

use super::ApiState;
use crate::telemetry::{Family, Kind};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering::Relaxed;

/// Every self-metric of the collector, now.
pub async fn gather(st: &ApiState) -> Vec<Family> {
    let s = st.store.stats();
    let disk = {
        let store = st.store.clone();
        tokio::task::spawn_blocking(move || store.size_on_disk().unwrap_or(0))
            .await
            .unwrap_or(0)
    };
    let n = |v: u64| v as f64;
    let mut out = vec![
        Family::new(
            "kappie_ingest_refused_unauthorized_total",
            Kind::Counter,
            "gRPC calls refused because the shipper wrote as a node its client certificate or ServiceAccount token does not name.",
        )
        .with(&[], n(crate::shipper_auth::REFUSED_UNAUTHORIZED.load(Relaxed))),
        Family::new(
            "kappie_ingest_refused_rate_limited_total",
            Kind::Counter,
            "gRPC pushes refused (to be retried) because their shipper sent more samples per second than --max-samples-per-shipper-per-second allows.",
        )
        .with(&[], n(crate::limits::REFUSED_RATE_LIMITED.load(Relaxed))),
        Family::new(
            "kappie_storage_samples_appended_total",
            Kind::Counter,
            "Samples written to the store.",
        )
        .with(&[], n(s.samples_appended.load(Relaxed))),
        Family::new(
            "kappie_storage_samples_refused_total",
            Kind::Counter,
            "Samples the store refused, by reason.",
        )
        .with(
            &[("reason", "out_of_order")],
            n(s.samples_refused_out_of_order.load(Relaxed)),
        )
        .with(
            &[("reason", "duplicate_timestamp")],
            n(s.samples_refused_duplicate_timestamp.load(Relaxed)),
        )
        .with(
            &[("reason", "too_old")],
            n(s.samples_refused_too_old.load(Relaxed)),
        ),
        Family::new(
            "kappie_storage_chunks_cut_total",
            Kind::Counter,
            "Compressed chunks cut from the head and staged.",
        )
        .with(&[], n(s.chunks_cut.load(Relaxed))),
        Family::new(
            "kappie_storage_windows_compacted_total",
            Kind::Counter,
            "Chunk windows packed into their blocks by compaction.",
        )
        .with(&[], n(s.windows_compacted.load(Relaxed))),
        Family::new("kappie_storage_series", Kind::Gauge, "Series in the store.")
            .with(&[], st.store.series_count() as f64),
        Family::new(
            "kappie_storage_blocks",
            Kind::Gauge,
            "Days with data on disk (compacted or staged).",
        )
        .with(&[], st.store.block_count() as f64),
        Family::new(
            "kappie_storage_disk_bytes",
            Kind::Gauge,
            "Bytes the data directory takes on disk.",
        )
        .with(&[], n(disk)),
        Family::new(
            "kappie_remote_read_requests_total",
            Kind::Counter,
            "Remote read requests answered, by response type.",
        )
        .with(
            &[("response_type", "SAMPLES")],
            n(st.query_stats.remote_read_samples.load(Relaxed)),
        )
        .with(
            &[("response_type", "STREAMED_XOR_CHUNKS")],
            n(st.query_stats.remote_read_streamed.load(Relaxed)),
        ),
    ];

    let rows = {
        let store = st.store.clone();
        let dests = st.remote_write.clone();
        tokio::task::spawn_blocking(move || {
            dests
                .iter()
                .map(|d| {
                    (
                        d.name.clone(),
                        [
                            d.stats.samples_sent.load(Relaxed) as f64,
                            d.stats.samples_failed.load(Relaxed) as f64,
                            d.dropped(&store) as f64,
                            d.stats.retries.load(Relaxed) as f64,
                            d.backlog_bytes(&store) as f64,
                            d.lag_seconds(&store),
                        ],
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    };
    for (i, (name, kind, help)) in [
        (
            "kappie_remote_write_samples_sent_total",
            Kind::Counter,
            "Samples delivered to the destination.",
        ),
        (
            "kappie_remote_write_samples_failed_total",
            Kind::Counter,
            "Samples in attempts that failed (5xx, network) and were retried.",
        ),
        (
            "kappie_remote_write_samples_dropped_total",
            Kind::Counter,
            "Samples given up on: refused with 4xx, or over the backlog limit.",
        ),
        (
            "kappie_remote_write_retries_total",
            Kind::Counter,
            "Requests retried (after 5xx, 429, network errors).",
        ),
        (
            "kappie_remote_write_backlog_bytes",
            Kind::Gauge,
            "Write-ahead log bytes not yet delivered to the destination.",
        ),
        (
            "kappie_remote_write_lag_seconds",
            Kind::Gauge,
            "Newest stored sample time minus newest delivered sample time.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut f = Family::new(name, kind, help);
        for (dest, v) in &rows {
            f.push("", &[("destination", dest)], v[i]);
        }
        out.push(f);
    }
    out.extend(super::shippers::metrics(st));

    let mut q = Family::new(
        "kappie_queries",
        Kind::Gauge,
        "PromQL evaluations running on a query thread, and waiting for one.",
    );
    for (state, v) in [
        ("running", &crate::promql::QUERIES_RUNNING),
        ("waiting", &crate::promql::QUERIES_WAITING),
    ] {
        q.push("", &[("state", state)], n(v.load(Relaxed) as u64));
    }
    out.push(q);
    let mut c = Family::new(
        "kappie_query_concurrency_max",
        Kind::Gauge,
        "Query threads: PromQL evaluations that run at once (--query-max-concurrency).",
    );
    c.push("", &[], crate::promql::query_concurrency() as f64);
    out.push(c);

    let mut h = Family::new(
        "kappie_query_duration_seconds",
        Kind::Histogram,
        "Time to evaluate and answer a PromQL query, by kind.",
    );
    for (kind, hist) in [
        ("instant", &st.query_stats.instant),
        ("range", &st.query_stats.range),
    ] {
        for (b, le) in hist.buckets.iter().zip(super::LATENCY_BUCKETS) {
            h.push(
                "_bucket",
                &[("kind", kind), ("le", &le.to_string())],
                n(b.load(Relaxed)),
            );
        }
        let count = n(hist.count.load(Relaxed));
        h.push("_bucket", &[("kind", kind), ("le", "+Inf")], count);
        h.push(
            "_sum",
            &[("kind", kind)],
            hist.sum_micros.load(Relaxed) as f64 / 1e6,
        );
        h.push("_count", &[("kind", kind)], count);
    }
    out.push(h);
    out
}

/// Self-metrics in the Prometheus text exposition format.
pub(super) async fn handler(State(st): State<ApiState>) -> Response {
    let text = crate::telemetry::render(&gather(&st).await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}
