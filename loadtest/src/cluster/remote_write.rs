//! The peer measurement: the same nodes and schedule, sent to a Prometheus by remote write
//! 1.0 instead of to Kappie, so both ingest paths are measured on the same series.
//!
//! Remote write carries cumulative values with every label on every request, so the
//! sender keeps each counter's running total and builds the series' labels per request (as
//! a Prometheus agent does after a scrape). A failed request (connection error, 5xx, 429)
//! is retried with the shipper's backoff; a 4xx other than 429 drops the batch. Prometheus
//! has no sessions or sequence numbers: the exactly-once figures are Kappie's alone.

use super::node::Layout;
use super::record::{Ack, Failure, Recorder};
use super::shipper::Batch;
use kappie_proto::prometheus as pb;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;

pub struct RwSender {
    pub index: u32,
    /// One agent for every sender, so connections are kept and reused.
    pub agent: ureq::Agent,
    pub url: String,
    pub layout: Arc<Layout>,
    pub rx: mpsc::UnboundedReceiver<Batch>,
    pub rec: Arc<Recorder>,
    pub max_backoff: Duration,
}

/// The request body of a batch: every series with its labels and one sample.
fn body(layout: &Layout, totals: &[f64], b: &Batch) -> Vec<u8> {
    let series = |r: u32, v: f64| {
        let i = r as usize - 1;
        let mut labels: Vec<pb::Label> = std::iter::once(pb::Label {
            name: "__name__".into(),
            value: layout.slots[i].metric.name().into(),
        })
        .chain(layout.labels(i).into_iter().map(|(n, v)| pb::Label {
            name: n.into(),
            value: v,
        }))
        .collect();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        pb::TimeSeries {
            labels,
            samples: vec![pb::Sample {
                value: v,
                timestamp: b.timestamp_ms,
            }],
        }
    };
    let req = pb::WriteRequest {
        timeseries: b
            .deltas
            .iter()
            .map(|d| series(d.r#ref, totals[d.r#ref as usize - 1]))
            .chain(b.gauges.iter().map(|g| series(g.r#ref, g.value)))
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap_or_default()
}

/// `Ok(true)` when the batch is stored, `Ok(false)` when it is refused for good, `Err`
/// with a status to retry after.
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<bool, Code> {
    match agent
        .post(url)
        .set("Content-Encoding", "snappy")
        .set("Content-Type", "application/x-protobuf")
        .set("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send_bytes(body)
    {
        Ok(_) => Ok(true),
        Err(ureq::Error::Status(code, _)) if code >= 500 || code == 429 => Err(Code::Unavailable),
        Err(ureq::Error::Status(code, r)) => {
            eprintln!(
                "remote write refused a batch: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            );
            Ok(false)
        }
        Err(_) => Err(Code::Unavailable),
    }
}

impl RwSender {
    pub async fn run(mut self) {
        let mut totals = vec![0.0; self.layout.slots.len()];
        let mut backoff = Duration::from_millis(250);
        while let Some(b) = self.rx.recv().await {
            let mut next = totals.clone();
            for d in &b.deltas {
                next[d.r#ref as usize - 1] += d.delta;
            }
            let body = Arc::new(body(&self.layout, &next, &b));
            loop {
                let (agent, url, req) = (self.agent.clone(), self.url.clone(), body.clone());
                let sent = std::time::Instant::now();
                let r = tokio::task::spawn_blocking(move || post(&agent, &url, &req))
                    .await
                    .unwrap_or(Err(Code::Internal));
                let now = Instant::now();
                let failure = |code| Failure {
                    shipper: self.index,
                    at_ms: self.rec.ms(now.into_std()),
                    hello: false,
                    code,
                };
                match r {
                    Ok(stored) => {
                        backoff = Duration::from_millis(250);
                        // Values are cumulative: the next batch carries a refused one's
                        // counts too.
                        totals = next;
                        if stored {
                            self.rec.acked(
                                Ack {
                                    shipper: self.index,
                                    at_ms: self.rec.ms(now.into_std()),
                                    latency_us: Some(sent.elapsed().as_micros() as u32),
                                    lag_ms: now.saturating_duration_since(b.scheduled).as_millis()
                                        as u32,
                                    samples: (b.deltas.len() + b.gauges.len()) as u32,
                                    duplicate: false,
                                },
                                b.count,
                            );
                        } else {
                            self.rec.rejected(failure(Code::InvalidArgument), b.count);
                        }
                        break;
                    }
                    Err(code) => {
                        self.rec.failed(failure(code));
                        let wait = backoff.mul_f64(rand::random::<f64>() * 0.4 + 0.8);
                        backoff = (backoff * 2).min(self.max_backoff);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
}
