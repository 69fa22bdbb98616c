//! The Prometheus-compatible HTTP API.
//!
//! Same JSON envelope, error types and HTTP status codes as Prometheus's `/api/v1`, so
//! Grafana's Prometheus datasource and Prometheus tooling work unchanged.

mod labels;
mod time;
mod write;

use crate::promql::{self, EvalError, InstantSample, Value};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kappie_storage::{Labels, Storage};
use serde::Deserialize;
use serde_json::{json, Map};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Storage,
    pub limits: ApiLimits,
}

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest remote write body, compressed or decompressed, in bytes.
    pub max_remote_write_bytes: usize,
}

/// The collector's HTTP routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query_get).post(query_post))
        .route("/api/v1/series", get(labels::series).post(labels::series))
        .route(
            "/api/v1/labels",
            get(labels::label_names).post(labels::label_names),
        )
        .route("/api/v1/label/{name}/values", get(labels::label_values))
        .route("/api/v1/metadata", get(labels::metadata))
        .route(
            "/api/v1/write",
            axum::routing::post(write::remote_write).layer(axum::extract::DefaultBodyLimit::max(
                state.limits.max_remote_write_bytes,
            )),
        )
        .route("/api/v1/status/buildinfo", get(labels::buildinfo))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(|| async { "Kappie is Healthy.\n" }))
        .route("/-/ready", get(|| async { "Kappie is Ready.\n" }))
        .with_state(state)
}

/// An API error in Prometheus's JSON shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl ApiError {
    pub fn bad_data(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error_type: "bad_data",
            message: message.into(),
        }
    }
    pub fn execution(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error_type: "execution",
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error_type: "internal",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": self.error_type, "error": self.message});
        (self.status, Json(body)).into_response()
    }
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::Parse(m) => ApiError::bad_data(format!("invalid parameter \"query\": {m}")),
            EvalError::Execution(m) => ApiError::execution(m),
            EvalError::Storage(e) => ApiError::internal(e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    query: Option<String>,
    time: Option<String>,
}

async fn query_get(
    State(st): State<ApiState>,
    Query(p): Query<QueryParams>,
) -> Result<Response, ApiError> {
    instant(st, p).await
}

async fn query_post(
    State(st): State<ApiState>,
    Form(p): Form<QueryParams>,
) -> Result<Response, ApiError> {
    instant(st, p).await
}

async fn instant(st: ApiState, p: QueryParams) -> Result<Response, ApiError> {
    let query = p.query.filter(|q| !q.is_empty()).ok_or_else(|| {
        ApiError::bad_data("invalid parameter \"query\": query must not be empty")
    })?;
    let t = match p.time.as_deref() {
        None | Some("") => time::now_ms(),
        Some(s) => time::parse_time(s)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"time\": {e}")))?,
    };
    let store = st.store.clone();
    let value = tokio::task::spawn_blocking(move || promql::instant_query(&store, &query, t))
        .await
        .map_err(|e| ApiError::internal(format!("query worker failed: {e}")))??;
    let data = match value {
        Value::Scalar { t, v } => {
            json!({"resultType": "scalar", "result": [time::ts_json(t), format_value(v)]})
        }
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.iter().map(vector_sample_json).collect::<Vec<_>>(),
        }),
    };
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}

/// Self-metrics in the Prometheus text exposition format.
async fn metrics(State(st): State<ApiState>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let s = st.store.stats();
    let disk = {
        let store = st.store.clone();
        tokio::task::spawn_blocking(move || store.size_on_disk().unwrap_or(0))
            .await
            .unwrap_or(0)
    };
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    put(
        "kappie_storage_samples_appended_total",
        "counter",
        "Samples written to the store.",
        &[("", s.samples_appended.load(Relaxed))],
    );
    put(
        "kappie_storage_samples_refused_total",
        "counter",
        "Samples the store refused, by reason.",
        &[
            (
                "{reason=\"out_of_order\"}",
                s.samples_refused_out_of_order.load(Relaxed),
            ),
            (
                "{reason=\"duplicate_timestamp\"}",
                s.samples_refused_duplicate_timestamp.load(Relaxed),
            ),
            (
                "{reason=\"too_old\"}",
                s.samples_refused_too_old.load(Relaxed),
            ),
        ],
    );
    put(
        "kappie_storage_chunks_cut_total",
        "counter",
        "Compressed chunks written to blocks.",
        &[("", s.chunks_cut.load(Relaxed))],
    );
    put(
        "kappie_storage_series",
        "gauge",
        "Series in the store.",
        &[("", st.store.series_count() as u64)],
    );
    put(
        "kappie_storage_blocks",
        "gauge",
        "Block databases on disk.",
        &[("", st.store.block_count() as u64)],
    );
    put(
        "kappie_storage_disk_bytes",
        "gauge",
        "Bytes the data directory takes on disk.",
        &[("", disk)],
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

pub(crate) fn labels_json(l: &Labels) -> serde_json::Value {
    let mut m = Map::new();
    for x in l.iter() {
        m.insert(x.name.clone(), serde_json::Value::String(x.value.clone()));
    }
    serde_json::Value::Object(m)
}

fn vector_sample_json(s: &InstantSample) -> serde_json::Value {
    json!({"metric": labels_json(&s.labels), "value": [time::ts_json(s.t), format_value(s.v)]})
}

/// Sample values as Prometheus writes them: shortest round-trip decimal, `NaN`, `+Inf`,
/// `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::format_value;

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }
}
