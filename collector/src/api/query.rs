//! `/api/v1/query` and `/api/v1/query_range`, GET or form-encoded POST, with Prometheus's
//! parameters (`query`, `time`, `start`, `end`, `step`, `timeout`) and result shapes.

use super::{
    blocking, format_value, labels_json, one, params, success, time, ApiError, ApiState,
    LatencyHistogram,
};
use crate::promql::{self, QueryLimits, Value};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use kappie_storage::Storage;
use serde_json::json;
use std::time::Duration;

/// Prometheus refuses range queries with more points per series than this.
const MAX_POINTS_PER_SERIES: i64 = 11_000;

fn query_text(p: &[(String, String)]) -> Result<String, ApiError> {
    one(p, "query")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": query must not be empty"))
}

fn time_param(p: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    one(p, name)
        .map(|s| {
            time::parse_time(s)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter \"{name}\": {e}")))
        })
        .transpose()
}

/// A duration given as seconds (`15`, `0.5`) or in Prometheus's notation (`1m30s`);
/// negative seconds come back as zero.
fn duration_param(p: &[(String, String)], name: &str) -> Result<Option<Duration>, ApiError> {
    let Some(s) = one(p, name) else {
        return Ok(None);
    };
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Ok(Some(Duration::from_secs_f64(f.max(0.0))));
        }
    }
    promql_parser::util::duration::parse_duration(s)
        .map(Some)
        .map_err(|_| {
            ApiError::bad_data(format!(
                "invalid parameter \"{name}\": cannot parse {s:?} to a valid duration"
            ))
        })
}

/// The configured limits, with the request's `timeout` when it is shorter.
fn limits(st: &ApiState, p: &[(String, String)]) -> Result<QueryLimits, ApiError> {
    let mut l = st.limits.query.clone();
    if let Some(d) = duration_param(p, "timeout")? {
        if !d.is_zero() {
            l.timeout = l.timeout.min(d);
        }
    }
    Ok(l)
}

pub(super) async fn instant(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = params(q, &body);
    let query = query_text(&p)?;
    let t = time_param(&p, "time")?.unwrap_or_else(time::now_ms);
    let limits = limits(&st, &p)?;
    evaluate(&st, &st.query_stats.instant, move |store| {
        promql::instant_query(store, &query, t, &limits)
    })
    .await
}

pub(super) async fn range(
    State(st): State<ApiState>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = params(q, &body);
    let query = query_text(&p)?;
    let start = time_param(&p, "start")?.ok_or_else(|| {
        ApiError::bad_data("invalid parameter \"start\": cannot parse \"\" to a valid timestamp")
    })?;
    let end = time_param(&p, "end")?.ok_or_else(|| {
        ApiError::bad_data("invalid parameter \"end\": cannot parse \"\" to a valid timestamp")
    })?;
    if end < start {
        return Err(ApiError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    let step = duration_param(&p, "step")?
        .ok_or_else(|| {
            ApiError::bad_data("invalid parameter \"step\": cannot parse \"\" to a valid duration")
        })?
        .as_millis() as i64;
    if step <= 0 {
        return Err(ApiError::bad_data(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > MAX_POINTS_PER_SERIES {
        return Err(ApiError::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let limits = limits(&st, &p)?;
    evaluate(&st, &st.query_stats.range, move |store| {
        promql::range_query(store, &query, start, end, step, &limits)
    })
    .await
}

/// Runs a query off the async runtime, times it in `latency`, and answers with its result.
async fn evaluate(
    st: &ApiState,
    latency: &LatencyHistogram,
    run: impl FnOnce(&Storage) -> Result<Value, promql::EvalError> + Send + 'static,
) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let started = std::time::Instant::now();
    let value = blocking(move || Ok(run(&store)?)).await;
    latency.observe(started.elapsed());
    Ok(success(value_json(&value?)))
}

fn point(t: i64, v: f64) -> serde_json::Value {
    json!([time::ts_json(t), format_value(v)])
}

/// A query result in the API's `data` shape.
pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Scalar { t, v } => json!({"resultType": "scalar", "result": point(*t, *v)}),
        Value::String { t, v } => {
            json!({"resultType": "string", "result": [time::ts_json(*t), v]})
        }
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples
                .iter()
                .map(|s| json!({"metric": labels_json(&s.labels), "value": point(s.t, s.v)}))
                .collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series
                .iter()
                .map(|s| json!({
                    "metric": labels_json(&s.labels),
                    "values": s.points.iter().map(|&(t, v)| point(t, v)).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        }),
    }
}
