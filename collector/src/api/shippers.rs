//! `GET /api/v1/kappie/shippers` and the inventory's self-metrics.

use super::time::{format_rfc3339, now_ms};
use super::ApiState;
use crate::shippers::Shipper;
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
pub(super) fn metrics(out: &mut String, st: &ApiState) {
    use std::fmt::Write;
    let shippers = st.shippers.list(now_ms());
    let name = "kappie_shippers";
    let _ = writeln!(
        out,
        "# HELP {name} Node shippers the collector knows (said Hello or pushed, also before a restart).\n# TYPE {name} gauge\n{name} {}",
        shippers.len()
    );
    let name = "kappie_shipper_last_push_timestamp_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} When the collector last applied a batch from the shipper, in seconds since the epoch.\n# TYPE {name} gauge"
    );
    for s in &shippers {
        if let Some(t) = s.record.last_push_ms {
            let _ = writeln!(
                out,
                "{name}{{shipper_id=\"{}\",node_name=\"{}\",cluster=\"{}\"}} {}",
                escape_label_value(&s.shipper_id),
                escape_label_value(&s.record.node_name),
                escape_label_value(&s.record.cluster),
                t as f64 / 1000.0
            );
        }
    }
}

/// A label value as the text exposition format quotes it: `\`, `"` and newline escaped.
pub(crate) fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_for_the_text_format() {
        assert_eq!(escape_label_value("plain-1"), "plain-1");
        assert_eq!(
            escape_label_value("a\\b\"c\nd"),
            "a\\\\b\\\"c\\nd",
            "backslash, quote and newline"
        );
    }
}
