//! Shared helpers of the collector's integration tests: a collector served in-process on
//! loopback ports and the query API as JSON.
#![allow(dead_code)] // each test file uses a different subset

use kappie_collector::{Config, Running};
use std::path::{Path, PathBuf};

/// A collector running inside this test process.
pub struct InProcess {
    pub running: Option<Running>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    pub async fn start(data_dir: &Path) -> InProcess {
        let config = Config {
            data_dir: data_dir.to_owned(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            cache_capacity_bytes: 8 << 20,
            // Tests count what they wrote; the collector's own metrics would add to it.
            self_scrape_interval_seconds: 0,
            ..Config::default()
        };
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> InProcess {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let running = kappie_collector::serve(&config, async move {
            let _ = rx.await;
        })
        .await
        .expect("collector starts");
        InProcess {
            running: Some(running),
            stop: Some(tx),
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().grpc_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().http_addr)
    }

    /// Stops the servers and waits until the store is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(r) = self.running.take() {
            r.wait().await.expect("clean shutdown");
        }
    }
}

/// The real `kappie-collector` process on loopback ports with `data` as its data
/// directory and `args` added, logging to `log`; returns it (not waited for: see
/// [`wait_ready`]) with its HTTP and gRPC URLs.
pub fn collector_process(
    data: &Path,
    log: &Path,
    args: &[&str],
) -> (kappie_testkit::Proc, String, String) {
    use kappie_testkit::prometheus::free_port;
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kappie-collector"));
    cmd.args(["--data-dir", data.to_str().unwrap()])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
        .args(args)
        // Tests count what they wrote (a test's own args can turn it on again).
        .env("KAPPIE_SELF_SCRAPE_INTERVAL_SECONDS", "0")
        .env("RUST_LOG", "info");
    (
        kappie_testkit::Proc::spawn("kappie-collector", cmd, log),
        format!("http://127.0.0.1:{http_port}"),
        format!("http://127.0.0.1:{grpc_port}"),
    )
}

/// Waits until the collector at `http` answers `/-/ready`.
pub fn wait_ready(http: &str) {
    kappie_testkit::wait_for(
        "the collector to be ready",
        std::time::Duration::from_secs(60),
        || ureq::get(&format!("{http}/-/ready")).call().ok(),
    );
}

/// Path of a binary of this workspace, next to the collector's.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_kappie-collector")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo test --workspace` builds every binary)",
        p.display()
    );
    p
}

/// `GET /api/v1/query` and the parsed JSON (blocking; call inside `Netns::enter` to reach
/// a collector in a namespace).
pub fn query(http: &str, q: &str) -> serde_json::Value {
    let resp = ureq::get(&format!("{http}/api/v1/query"))
        .query("query", q)
        .call();
    let text = match resp {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
        Err(e) => return serde_json::json!({"status": "unreachable", "error": e.to_string()}),
    };
    serde_json::from_str(&text).unwrap()
}

/// The single value of an instant query, if it returned exactly one series.
pub fn single_value(v: &serde_json::Value) -> Option<f64> {
    let r = v["data"]["result"].as_array()?;
    if r.len() != 1 {
        return None;
    }
    r[0]["value"][1].as_str()?.parse().ok()
}
