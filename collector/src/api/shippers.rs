//! `GET /api/v1/kappie/shippers` and the inventory's self-metrics.

use super::time::{format_rfc3339, now_ms};
use super::ApiState;
use crate::shippers::Shipper;
use crate::telemetry::{Family, Kind};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

/// The shippers the collector knows, by node name and then shipper id, in Prometheus's
/// envelope. Times are RFC 3339 (UTC) of the collector's clock.
pub(super) async fn list(State(st): State<ApiState>) -> Response {
    let now = now_ms();
    let rows: Vec<Value> = st
        .shippers
        .list(now)
        .iter()
        .map(|s| to_json(s, now))
        .collect();
    super::success(Value::Array(rows))
}

fn to_json(s: &Shipper, now_ms: i64) -> Value {
    let r = &s.record;
    json!({
        "shipperId": s.shipper_id,
        "nodeName": r.node_name,
        "cluster": r.cluster,
        "version": r.version,
        "sessionStart": r.session_start_ms.map(format_rfc3339),
        "lastSequence": s.last_sequence,
        "lastPushTime": r.last_push_ms.map(format_rfc3339),
        "lastPushAgeSeconds": r.last_push_ms.map(|t| (now_ms - t) as f64 / 1000.0),
        "series": s.series,
        "samplesLastMinute": s.samples_last_minute,
    })
}

/// `kappie_shippers` and, per shipper that has pushed, its last push time in seconds, so
/// `time() - kappie_shipper_last_push_timestamp_seconds > 60` finds the silent ones.
pub(super) fn metrics(st: &ApiState) -> Vec<Family> {
    let shippers = st.shippers.list(now_ms());
    let count = Family::new(
        "kappie_shippers",
        Kind::Gauge,
        "Node shippers the collector knows (said Hello or pushed, also before a restart).",
    )
    .with(&[], shippers.len() as f64);
    let mut last = Family::new(
        "kappie_shipper_last_push_timestamp_seconds",
        Kind::Gauge,
        "When the collector last applied a batch from the shipper, in seconds since the epoch.",
    );
    for s in &shippers {
        if let Some(t) = s.record.last_push_ms {
            last.push(
                "",
                &[
                    ("shipper_id", &s.shipper_id),
                    ("node_name", &s.record.node_name),
                    ("cluster", &s.record.cluster),
                ],
                t as f64 / 1000.0,
            );
        }
    }
    vec![count, last]
}
