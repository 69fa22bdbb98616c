//! A real Prometheus 2.42 on loopback as a test peer: started with the remote-write
//! receiver in a directory of the test's own, fed by remote write, queried over HTTP, and
//! killed on drop.

use kappie_proto::prometheus as pb;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a test that needs Prometheus should run: see [`crate::require`] (it must when
/// `CI` is set, where the CI script installs it).
pub fn required(test: &str) -> bool {
    crate::require_for(test, &[crate::need::PROMETHEUS])
}

pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub log: PathBuf,
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Prometheus {
    /// Starts Prometheus with its data in `dir` and `extra_config` appended to an otherwise
    /// empty configuration (no scrapes; evaluation interval 1m), and waits until it is ready.
    pub fn start(dir: &Path, extra_config: &str) -> Prometheus {
        Self::start_on(dir, extra_config, free_port())
    }

    /// Like [`Prometheus::start`], listening on `port` (to come back where it was).
    pub fn start_on(dir: &Path, extra_config: &str, port: u16) -> Prometheus {
        Self::start_with(dir, extra_config, port, None)
    }

    /// Like [`Prometheus::start_on`]; with `web_config` (a `--web.config.file`, e.g. TLS
    /// that requires client certificates) readiness is read from the log instead of HTTP.
    pub fn start_with(
        dir: &Path,
        extra_config: &str,
        port: u16,
        web_config: Option<&Path>,
    ) -> Prometheus {
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!("global:\n  evaluation_interval: 1m\n{extra_config}"),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new("prometheus");
        if let Some(w) = web_config {
            cmd.arg(format!("--web.config.file={}", w.display()));
        }
        let child = cmd
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("prometheus log"),
            )
            .spawn()
            .expect("start prometheus (apt-get install prometheus)");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = || match web_config {
            None => ureq::get(&format!("{}/-/ready", p.base)).call().is_ok(),
            Some(_) => std::fs::read(&p.log).is_ok_and(|b| {
                String::from_utf8_lossy(&b[(log_start as usize).min(b.len())..])
                    .contains("Server is ready to receive web requests")
            }),
        };
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not get ready; see {}",
                p.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The Prometheus process id (for resource measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Remote-writes `series` to this Prometheus.
    pub fn write(&self, series: Vec<pb::TimeSeries>) -> Result<(), String> {
        remote_write(&format!("{}/api/v1/write", self.base), series)
    }

    /// GETs an API path with parameters and returns the JSON body, also for 4xx/5xx.
    pub fn get(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        get_json(&format!("{}{path}", self.base), params)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one remote-write 1.0 request (snappy protobuf) to `url`.
pub fn remote_write(url: &str, series: Vec<pb::TimeSeries>) -> Result<(), String> {
    let req = pb::WriteRequest {
        timeseries: series,
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| e.to_string())?;
    match ureq::post(url)
        .set("Content-Encoding", "snappy")
        .set("Content-Type", "application/x-protobuf")
        .set("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send_bytes(&body)
    {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, r)) => Err(format!(
            "{url}: HTTP {code}: {}",
            r.into_string().unwrap_or_default()
        )),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// GETs `url` with query parameters and parses the JSON body, whatever the status.
pub fn get_json(url: &str, params: &[(&str, &str)]) -> serde_json::Value {
    let mut req = ureq::get(url);
    for (k, v) in params {
        req = req.query(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let text = resp.into_string().expect("response body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// A remote-write series from label pairs and `(ms, value)` samples.
pub fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> pb::TimeSeries {
    let mut l: Vec<pb::Label> = labels
        .iter()
        .map(|(n, v)| pb::Label {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect();
    l.sort_by(|a, b| a.name.cmp(&b.name));
    pb::TimeSeries {
        labels: l,
        samples: samples
            .iter()
            .map(|&(t, v)| pb::Sample {
                value: v,
                timestamp: t,
            })
            .collect(),
    }
}

/// One series of a remote read answer: sorted label pairs and `(ms, value bits)` samples.
pub type ReadSeries = (Vec<(String, String)>, Vec<(i64, u64)>);

/// Remote read (`SAMPLES`) of `[start, end]` for one query whose matchers are
/// `(type, name, value)`; the series in the answer's order, values as their exact bits.
pub fn remote_read_samples(
    url: &str,
    matchers: &[(pb::label_matcher::Type, &str, &str)],
    start: i64,
    end: i64,
) -> Result<Vec<ReadSeries>, String> {
    let req = pb::ReadRequest {
        queries: vec![pb::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: matchers
                .iter()
                .map(|(t, n, v)| pb::LabelMatcher {
                    r#type: *t as i32,
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            hints: None,
        }],
        accepted_response_types: vec![pb::read_request::ResponseType::Samples as i32],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| e.to_string())?;
    let resp = match ureq::post(url)
        .set("Content-Type", "application/x-protobuf")
        .set("Content-Encoding", "snappy")
        .send_bytes(&body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!(
                "{url}: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            ))
        }
        Err(e) => return Err(format!("{url}: {e}")),
    };
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut raw).map_err(|e| e.to_string())?;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&raw)
        .map_err(|e| format!("{url}: snappy: {e}"))?;
    let resp = pb::ReadResponse::decode(raw.as_slice()).map_err(|e| format!("{url}: {e}"))?;
    Ok(resp
        .results
        .into_iter()
        .flat_map(|r| r.timeseries)
        .map(|ts| {
            (
                ts.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                ts.samples
                    .iter()
                    .map(|s| (s.timestamp, s.value.to_bits()))
                    .collect(),
            )
        })
        .collect())
}
