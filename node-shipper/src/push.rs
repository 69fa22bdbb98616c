//! The gRPC push client: session, series references and exactly-once delivery of batches.

use crate::queue::Batch;
use crate::series::SeriesKey;
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{
    CounterDelta, GaugeValue, HelloRequest, Label, MetricType, PushRequest, PushStatus,
    SeriesDefinition,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Metadata key of the collector's "define these series again" answer.
pub const DEFINE_SERIES_METADATA: &str = "kappie-define-series";

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Applied,
    Duplicate,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Try again later (collector down, overloaded, clock skew, …).
    #[error("collector unavailable: {0}")]
    Retry(Status),
    /// The collector will never accept this batch as it is.
    #[error("collector rejected the batch: {0}")]
    Rejected(Status),
}

/// Who the shipper is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub shipper_id: String,
    pub node_name: String,
    pub cluster: String,
    pub session: u64,
}

/// One session with the collector.
pub struct Pusher {
    client: IngestClient<Channel>,
    id: Identity,
    refs: HashMap<SeriesKey, (u32, MetricType)>,
    /// References the collector has stored the definition of.
    confirmed: HashSet<u32>,
}

impl Pusher {
    /// A lazily connecting client for `url` (`http://host:port`, or `https://` with the
    /// PEM of the CA that signed the collector's certificate in `ca_pem`, and the PEM
    /// certificate and key naming this node in `client` when the collector asks for one).
    pub fn new(
        url: &str,
        id: Identity,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
        client: Option<(&[u8], &[u8])>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout);
        if ca_pem.is_some() || client.is_some() {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(pem) = ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = client {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect_lazy();
        Ok(Pusher {
            client: IngestClient::new(channel)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(64 << 20),
            id,
            refs: HashMap::new(),
            confirmed: HashSet::new(),
        })
    }

    /// Starts the session; returns the last sequence the collector applied for us.
    pub async fn hello(&mut self) -> Result<u64, PushError> {
        let r = self
            .client
            .hello(HelloRequest {
                shipper_id: self.id.shipper_id.clone(),
                session: self.id.session,
                node_name: self.id.node_name.clone(),
                cluster: self.id.cluster.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .await
            .map_err(classify)?;
        Ok(r.into_inner().last_applied_sequence)
    }

    fn reference(&mut self, key: &SeriesKey, kind: MetricType) -> u32 {
        let next = self.refs.len() as u32 + 1;
        self.refs.entry(key.clone()).or_insert((next, kind)).0
    }

    fn request(&mut self, b: &Batch, sequence: u64) -> PushRequest {
        let mut req = PushRequest {
            shipper_id: self.id.shipper_id.clone(),
            session: self.id.session,
            sequence,
            timestamp_ms: b.timestamp_ms,
            ..Default::default()
        };
        let define = |this: &mut Self,
                      key: &SeriesKey,
                      kind: MetricType,
                      defs: &mut Vec<SeriesDefinition>| {
            let r = this.reference(key, kind);
            if !this.confirmed.contains(&r) {
                defs.push(SeriesDefinition {
                    r#ref: r,
                    metric: key.metric.clone(),
                    r#type: kind as i32,
                    labels: key
                        .labels
                        .iter()
                        .map(|(n, v)| Label {
                            name: n.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                });
            }
            r
        };
        let mut defs = Vec::new();
        for (k, d) in &b.counters {
            let r = define(self, k, MetricType::Counter, &mut defs);
            req.deltas.push(CounterDelta {
                r#ref: r,
                delta: *d,
            });
        }
        for (k, v) in &b.gauges {
            let r = define(self, k, MetricType::Gauge, &mut defs);
            req.gauges.push(GaugeValue {
                r#ref: r,
                value: v.unwrap_or(0.0),
                stale: v.is_none(),
            });
        }
        req.definitions = defs;
        req
    }

    /// Sends a numbered batch; when the collector asks for definitions, sends it once more
    /// with them.
    pub async fn push(&mut self, b: &Batch) -> Result<Delivered, PushError> {
        let seq = b.sequence.expect("a batch is numbered before it is sent");
        for attempt in 0..2 {
            let req = self.request(b, seq);
            let used: Vec<u32> = req.definitions.iter().map(|d| d.r#ref).collect();
            match self.client.push(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    return Ok(if resp.status == PushStatus::Duplicate as i32 {
                        Delivered::Duplicate
                    } else {
                        self.confirmed.extend(used);
                        Delivered::Applied
                    });
                }
                Err(st)
                    if st.code() == Code::FailedPrecondition
                        && st.metadata().get(DEFINE_SERIES_METADATA).is_some() =>
                {
                    tracing::info!(
                        attempt,
                        sequence = seq,
                        "collector asked for series definitions again"
                    );
                    self.confirmed.clear();
                }
                Err(st) => return Err(classify(st)),
            }
        }
        Err(PushError::Retry(Status::failed_precondition(
            "collector still lacks series definitions",
        )))
    }
}

fn classify(st: Status) -> PushError {
    match st.code() {
        Code::InvalidArgument
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::PermissionDenied => PushError::Rejected(st),
        _ => PushError::Retry(st),
    }
}
