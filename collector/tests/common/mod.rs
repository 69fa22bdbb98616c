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
