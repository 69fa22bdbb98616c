//! The gRPC push client: session, series references and exactly-once delivery of batches.

use crate::queue::Batch;
use crate::series::SeriesKey;
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::{
    CounterDelta, GaugeValue, HelloRequest, Label, MetricType, PushRequest, PushStatus,
    SeriesDefinition,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Metadata key of the collector's "define these series again" answer.
pub const DEFINE_SERIES_METADATA: &str = "kappie-define-series";

/// Metadata key of the collector's "over your rate limit, retry in this many milliseconds"
/// answer (RESOURCE_EXHAUSTED). Without it RESOURCE_EXHAUSTED is final (e.g. too many series).
pub const RETRY_AFTER_MS_METADATA: &str = "kappie-retry-after-ms";

/// How long the collector asked us to wait before retrying `st`'s call, if it did.
pub fn retry_after(st: &Status) -> Option<std::time::Duration> {
    let ms: u64 = st
        .metadata()
        .get(RETRY_AFTER_MS_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // A confused or hostile collector must not park the shipper for long.
    Some(std::time::Duration::from_millis(ms.min(300_000)))
}

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

/// The collector token is read again when the copy in memory is this old (the kubelet
/// rotates a projected token when 80 % of its lifetime has passed).
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);

/// The token of `--collector-token-file`, as the `authorization` value sent with every call:
/// read at start, again before each Hello, after an UNAUTHENTICATED answer and when older
/// than [`TOKEN_REREAD`]. A read that fails keeps the last token (and says so).
pub struct TokenFile {
    path: PathBuf,
    /// The value and when it was read; `None` when it is to be read again.
    cached: Mutex<(MetadataValue<Ascii>, Option<Instant>)>,
}

impl TokenFile {
    /// Reads `path` now: an error when it cannot be read or holds no token.
    pub fn open(path: &Path) -> std::io::Result<TokenFile> {
        let value = Self::read(path)?;
        Ok(TokenFile {
            path: path.to_owned(),
            cached: Mutex::new((value, Some(Instant::now()))),
        })
    }

    fn read(path: &Path) -> std::io::Result<MetadataValue<Ascii>> {
        let invalid = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("collector token file {}: {why}", path.display()),
            )
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot read the collector token file {}: {e}",
                    path.display()
                ),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid("empty"));
        }
        format!("Bearer {token}")
            .parse()
            .map_err(|_| invalid("not a token (printable ASCII)"))
    }

    /// The current value, read again first if due.
    fn value(&self) -> MetadataValue<Ascii> {
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.1.is_none_or(|t| t.elapsed() >= TOKEN_REREAD) {
            match Self::read(&self.path) {
                Ok(v) => c.0 = v,
                Err(e) => tracing::warn!(error = %e, "keeping the last collector token"),
            }
            c.1 = Some(Instant::now());
        }
        c.0.clone()
    }

    /// Reads the file again before the next call.
    fn expire(&self) {
        self.cached.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
    }
}

/// Adds the collector token (when there is one) to every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<Arc<TokenFile>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.value());
        }
        Ok(req)
    }
}

/// One session with the collector.
pub struct Pusher {
    client: IngestClient<InterceptedService<Channel, Bearer>>,
    channel: Channel,
    token: Bearer,
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
            client: ingest_client(&channel, Bearer::default()),
            channel,
            token: Bearer::default(),
            id,
            refs: HashMap::new(),
            confirmed: HashSet::new(),
        })
    }

    /// Sends the token in `file` with every call (`--collector-token-file`); reads it now.
    pub fn with_token_file(mut self, file: Option<&Path>) -> std::io::Result<Self> {
        if let Some(f) = file {
            self.token = Bearer(Some(Arc::new(TokenFile::open(f)?)));
            self.client = ingest_client(&self.channel, self.token.clone());
        }
        Ok(self)
    }

    /// After an UNAUTHENTICATED answer the token file is read again before the next call.
    fn on_error(&self, st: Status) -> PushError {
        if st.code() == Code::Unauthenticated {
            if let Some(t) = &self.token.0 {
                t.expire();
            }
        }
        classify(st)
    }

    /// Starts the session; returns the last sequence the collector applied for us.
    pub async fn hello(&mut self) -> Result<u64, PushError> {
        if let Some(t) = &self.token.0 {
            t.expire();
        }
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
            .map_err(|st| self.on_error(st))?;
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
                Err(st) => return Err(self.on_error(st)),
            }
        }
        Err(PushError::Retry(Status::failed_precondition(
            "collector still lacks series definitions",
        )))
    }
}

fn ingest_client(
    channel: &Channel,
    token: Bearer,
) -> IngestClient<InterceptedService<Channel, Bearer>> {
    IngestClient::with_interceptor(channel.clone(), token)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(64 << 20)
}

fn classify(st: Status) -> PushError {
    if retry_after(&st).is_some() {
        return PushError::Retry(st);
    }
    match st.code() {
        Code::InvalidArgument
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::PermissionDenied => PushError::Rejected(st),
        _ => PushError::Retry(st),
    }
}
