//! The shipper's own HTTP endpoints on `--http-listen`: `/metrics` (Prometheus text
//! format), `/-/healthy` (liveness: the collection loop runs and collects) and `/-/ready`
//! (readiness: the collector has acknowledged a push of this process).

use crate::telemetry::Telemetry;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a stopping shipper waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .with_state(telemetry)
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.render(),
    )
        .into_response()
}

async fn healthy(State(t): State<Arc<Telemetry>>) -> Response {
    match t.health() {
        Ok(()) => "Kappie shipper is Healthy.\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Kappie shipper is unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn ready(State(t): State<Arc<Telemetry>>) -> Response {
    if t.ready() {
        "Kappie shipper is Ready.\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Kappie shipper is not ready: the collector has not acknowledged a push yet\n",
        )
            .into_response()
    }
}

/// Binds `addr`, with an error that says what to do.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address in use".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => "no such local address".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "cannot listen on {addr}: {why}; set --http-listen (KAPPIE_SHIPPER_HTTP_LISTEN) to a free \
             address, or to \"\" to turn the shipper's HTTP endpoints off"
        )
    })
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                tracing::error!(error = %e, "the HTTP server failed; /metrics, /-/healthy and /-/ready are gone");
            }
            return;
        }
        () = shutdown => {}
    }
    let _ = stop_tx.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        tracing::warn!("HTTP requests still open after {SHUTDOWN_GRACE:?}; dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(t: &Arc<Telemetry>, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router(t.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_is_503_until_a_push_is_acknowledged() {
        let t = Arc::new(Telemetry::new(Duration::from_secs(10), "n", "c"));
        let (status, body) = get(&t, "/-/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not acknowledged"), "{body}");
        t.push_acknowledged(Some(1));
        assert_eq!(get(&t, "/-/ready").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn healthy_says_why_not() {
        let t = Arc::new(Telemetry::new(Duration::from_secs(10), "n", "c"));
        let (status, body) = get(&t, "/-/healthy").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        t.loop_started();
        t.collected();
        assert_eq!(get(&t, "/-/healthy").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let t = Arc::new(Telemetry::new(Duration::from_secs(10), "n", "c"));
        let (status, body) = get(&t, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("# TYPE kappie_shipper_pushes_total counter"));
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "cannot listen on {addr}: address in use; set --http-listen"
            )),
            "{e}"
        );
    }
}
