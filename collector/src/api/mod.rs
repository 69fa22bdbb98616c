//! The Prometheus-compatible HTTP API.
//!
//! Same JSON envelope, error types and HTTP status codes as Prometheus's `/api/v1`, so
//! Grafana's Prometheus datasource and Prometheus tooling work unchanged.

pub mod auth;
mod console;
mod labels;
pub mod metrics;
mod query;
mod shippers;
mod time;
pub mod write;

use crate::promql::{EvalError, QueryLimits};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kappie_storage::{Labels, Storage};
use serde_json::{json, Map};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Storage,
    pub limits: ApiLimits,
    pub query_stats: std::sync::Arc<QueryStats>,
    /// Remote write destinations, for their metrics.
    pub remote_write: std::sync::Arc<Vec<crate::remote::write::Destination>>,
    /// Remote reads running at once (`--remote-read-concurrency`).
    pub remote_read_gate: std::sync::Arc<tokio::sync::Semaphore>,
    /// The node shippers ingest has seen.
    pub shippers: std::sync::Arc<crate::shippers::Inventory>,
    /// Credentials the API and `/metrics` require, if any.
    pub auth: Option<std::sync::Arc<auth::HttpAuth>>,
}

/// Upper bounds (seconds) of the query latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative latency histogram in the shape of a Prometheus histogram.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [std::sync::atomic::AtomicU64; 11],
    count: std::sync::atomic::AtomicU64,
    sum_micros: std::sync::atomic::AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let secs = d.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// Latency of PromQL queries answered (successful or not), by kind.
#[derive(Default)]
pub struct QueryStats {
    pub instant: LatencyHistogram,
    pub range: LatencyHistogram,
    /// Remote reads answered, by response type.
    pub remote_read_samples: std::sync::atomic::AtomicU64,
    pub remote_read_streamed: std::sync::atomic::AtomicU64,
}

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Label counts and lengths of remote-written series.
    pub labels: crate::limits::LabelLimits,
    /// Requests to `/api/` and `/metrics` served at once; past it, 503 at once.
    pub max_concurrent_requests: usize,
    /// Longest a request to `/api/` and `/metrics` may take until its response starts
    /// (a body sent slowly included); then 503.
    pub request_timeout: std::time::Duration,
    /// Largest remote write body, compressed or decompressed, in bytes.
    pub max_remote_write_bytes: usize,
    /// PromQL evaluation limits.
    pub query: QueryLimits,
    pub remote_read: RemoteReadLimits,
}

/// Limits and offers of remote read.
#[derive(Debug, Clone)]
pub struct RemoteReadLimits {
    /// Largest decompressed request, bytes.
    pub max_request_bytes: usize,
    /// Most samples one SAMPLES response may carry.
    pub max_samples: usize,
    /// Frames of STREAMED_XOR_CHUNKS are cut once they reach this size.
    pub max_frame_bytes: usize,
    /// Response types offered, as `ReadRequest.ResponseType` numbers.
    pub response_types: Vec<i32>,
}

/// The collector's HTTP routes. The API and `/metrics` are behind the concurrency and time
/// limits of [`ApiLimits`] (and the authentication, when configured); the health endpoints
/// are not, so probes answer under load, and neither is the web console's static page
/// (`console.rs`), whose API calls are.
pub fn router(state: ApiState) -> Router {
    let limits = state.limits.clone();
    let health = Router::new()
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(|| async { "Kappie is Ready.\n" }))
        .with_state(state.clone());
    let max = limits.max_concurrent_requests;
    let timeout = limits.request_timeout;
    let mut api = api_routes(state.clone());
    if let Some(auth) = state.auth.clone() {
        api = api.route_layer(axum::middleware::from_fn_with_state(auth, auth::require));
    }
    api.layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    move |e: tower::BoxError| async move {
                        let message = if e.is::<tower::timeout::error::Elapsed>() {
                            format!(
                                "the request took longer than {} s (--http-request-timeout-seconds)",
                                timeout.as_secs()
                            )
                        } else if e.is::<tower::load_shed::error::Overloaded>() {
                            format!(
                                "more than {max} requests at once (--http-max-concurrent-requests); retry later"
                            )
                        } else {
                            format!("request failed: {e}")
                        };
                        ApiError::unavailable(message)
                    },
                ))
                .load_shed()
                // One semaphore for all routes (`Router::layer` wraps each route apart).
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max))
                .timeout(timeout),
        )
        .merge(health)
        .merge(console::routes())
}

fn api_routes(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query::instant).post(query::instant))
        .route("/api/v1/query_range", get(query::range).post(query::range))
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
        .route(
            "/api/v1/read",
            axum::routing::post(crate::remote::read::remote_read).layer(
                axum::extract::DefaultBodyLimit::max(state.limits.remote_read.max_request_bytes),
            ),
        )
        .route("/api/v1/status/buildinfo", get(labels::buildinfo))
        .route("/api/v1/kappie/shippers", get(shippers::list))
        .route("/api/v1/rules", get(labels::rules))
        .route("/api/v1/alerts", get(labels::alerts))
        .route(
            "/api/v1/query_exemplars",
            get(labels::query_exemplars).post(labels::query_exemplars),
        )
        .route("/metrics", get(metrics::handler))
        .with_state(state)
}

/// Liveness: unhealthy (503) once the store stopped taking writes after a failure it cannot
/// undo in place (`StorageError::Stopped`); a restart replays the log, so Kubernetes'
/// liveness probe restarting the pod is the repair.
async fn healthy(State(st): State<ApiState>) -> Response {
    match st.store.write_error() {
        None => "Kappie is Healthy.\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Kappie is unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

/// An API error in Prometheus's JSON shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

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
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_type: "timeout",
            message: message.into(),
        }
    }
    /// 503 `unavailable`: the store cannot take the write now (a full disk, say); remote
    /// write senders retry 5xx answers.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_type: "unavailable",
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
            EvalError::Timeout(m) => ApiError::timeout(m),
            EvalError::Storage(e) => ApiError::internal(e.to_string()),
        }
    }
}

/// Parameters from the query string and the form body, in order (Prometheus reads both
/// for POST).
pub(super) fn params(raw: Option<String>, body: &[u8]) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    p.extend(form_urlencoded::parse(body).into_owned());
    p
}

/// The first non-empty value of parameter `name`.
pub(super) fn one<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

pub(super) fn success(data: serde_json::Value) -> Response {
    Json(json!({"status": "success", "data": data})).into_response()
}

/// Runs store reads and query evaluation off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

pub(crate) fn labels_json(l: &Labels) -> serde_json::Value {
    let mut m = Map::new();
    for x in l.iter() {
        m.insert(x.name.clone(), serde_json::Value::String(x.value.clone()));
    }
    serde_json::Value::Object(m)
}

pub use crate::promql::format_value;
