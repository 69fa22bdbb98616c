//! Remote write out: every committed sample to every configured destination (Azure Monitor
//! managed Prometheus, Mimir, Prometheus), remote-write 1.0.
//!
//! Each destination follows the store's write-ahead log with its own cursor (the sequence
//! of the last record it has completely delivered, in `<data-dir>/remote_write/<name>.cursor`)
//! and holds the log from there, so a collector restart or a destination outage loses
//! nothing up to the store's `wal_hold_max_bytes`; past it the oldest held records go and
//! are counted as dropped. A round reads up to `max_round_samples` from the log, splits
//! them into `shards` by series (a series always goes to the same shard, in log order),
//! sends the shards concurrently in requests of at most `max_samples_per_send`, and moves
//! the cursor once every shard is done. Delivery is at least once: a round cut short by a
//! restart is sent again (Prometheus ignores a repeated identical sample).
//!
//! Responses: 2xx sent; 5xx and network errors retried with capped exponential backoff
//! and jitter, for as long as it takes; 429 retried after `Retry-After` (seconds or an
//! HTTP date, capped at `max_retry_after_seconds`); any other 4xx dropped and counted, never
//! retried.

use super::auth::{Auth, AuthConfig};
use kappie_proto::prometheus as pb;
use kappie_storage::{SeriesId, Storage};
use prost::Message;
use rand::Rng;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One destination (`[[remote_write]]` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Names the destination in metrics, logs and its cursor file: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// The remote write endpoint, e.g. an Azure Monitor DCR ingestion URL.
    pub url: String,
    /// Added to every series that does not have the label already.
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// HTTP headers sent with every request, e.g. Mimir's `X-Scope-OrgID` tenant. Headers
    /// Kappie sets itself (authorization, content type and encoding, remote write version,
    /// user agent) are refused.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "defaults::shards")]
    pub shards: usize,
    #[serde(default = "defaults::max_samples_per_send")]
    pub max_samples_per_send: usize,
    #[serde(default = "defaults::max_round_samples")]
    pub max_round_samples: usize,
    #[serde(default = "defaults::min_backoff_ms")]
    pub min_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    #[serde(default = "defaults::max_retry_after_seconds")]
    pub max_retry_after_seconds: u64,
    #[serde(default = "defaults::timeout_seconds")]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub tls: TlsConfig,
}

mod defaults {
    pub fn shards() -> usize {
        4
    }
    pub fn max_samples_per_send() -> usize {
        2_000
    }
    pub fn max_round_samples() -> usize {
        50_000
    }
    pub fn min_backoff_ms() -> u64 {
        30
    }
    pub fn max_backoff_ms() -> u64 {
        5_000
    }
    pub fn max_retry_after_seconds() -> u64 {
        300
    }
    pub fn timeout_seconds() -> u64 {
        30
    }
}

impl DestinationConfig {
    /// A destination with default settings and no auth.
    pub fn plain(name: &str, url: &str) -> DestinationConfig {
        DestinationConfig {
            name: name.into(),
            url: url.into(),
            external_labels: BTreeMap::new(),
            headers: BTreeMap::new(),
            shards: defaults::shards(),
            max_samples_per_send: defaults::max_samples_per_send(),
            max_round_samples: defaults::max_round_samples(),
            min_backoff_ms: defaults::min_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_retry_after_seconds: defaults::max_retry_after_seconds(),
            timeout_seconds: defaults::timeout_seconds(),
            auth: AuthConfig::None,
            tls: TlsConfig::default(),
        }
    }
}

/// TLS towards a destination: a custom CA and a client certificate (mTLS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust (instead of the built-in web roots).
    pub ca_file: Option<PathBuf>,
    /// PEM files of the client certificate (chain) and its private key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Counters of one destination, exported in `/metrics`.
#[derive(Default)]
pub struct DestinationStats {
    pub samples_sent: AtomicU64,
    /// Samples in attempts that failed and were retried.
    pub samples_failed: AtomicU64,
    /// Samples given up on: refused with a 4xx other than 429, or of series gone.
    pub samples_dropped: AtomicU64,
    pub retries: AtomicU64,
    /// The cursor: last log record completely delivered.
    pub delivered_seq: AtomicU64,
    /// Newest sample time delivered, ms.
    pub newest_sent_ms: AtomicI64,
}

/// A running destination, for metrics.
pub struct Destination {
    pub name: String,
    pub stats: Arc<DestinationStats>,
}

impl Destination {
    /// Samples dropped: refused ones plus those the log could no longer hold.
    pub fn dropped(&self, store: &Storage) -> u64 {
        self.stats.samples_dropped.load(Relaxed) + store.wal_hold_dropped(&self.name)
    }

    /// Bytes of log not yet delivered.
    pub fn backlog_bytes(&self, store: &Storage) -> u64 {
        let at = self.stats.delivered_seq.load(Relaxed);
        if at >= store.last_seq() {
            return 0;
        }
        store.wal_bytes_after(at)
    }

    /// How far behind the newest stored sample delivery is, in seconds.
    pub fn lag_seconds(&self, store: &Storage) -> f64 {
        if self.stats.delivered_seq.load(Relaxed) >= store.last_seq() {
            return 0.0;
        }
        let newest = store.stats().newest_sample_ms.load(Relaxed);
        let sent = self.stats.newest_sent_ms.load(Relaxed);
        (newest - sent).max(0) as f64 / 1000.0
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Headers a destination's `headers` may not set: Kappie sets them itself.
const RESERVED_HEADERS: [&str; 7] = [
    "authorization",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "user-agent",
    "x-prometheus-remote-write-version",
];

pub(crate) fn extra_headers(cfg: &DestinationConfig) -> Result<reqwest::header::HeaderMap, String> {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            format!(
                "remote write {}: {k:?} is not an HTTP header name",
                cfg.name
            )
        })?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "remote write {}: header {k:?} is set by Kappie and cannot be configured (use auth for credentials)",
                cfg.name
            ));
        }
        let value = HeaderValue::from_str(v).map_err(|_| {
            format!(
                "remote write {}: header {k:?} has a value that is not valid in HTTP",
                cfg.name
            )
        })?;
        map.insert(name, value);
    }
    Ok(map)
}

fn client(cfg: &DestinationConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_seconds))
        .user_agent(concat!("kappie/", env!("CARGO_PKG_VERSION")))
        .default_headers(extra_headers(cfg)?);
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    if let Some(ca) = &cfg.tls.ca_file {
        b = b.tls_built_in_root_certs(false);
        for c in reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            b = b.identity(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| format!("client certificate or key unusable: {e}"))?,
            );
        }
        (None, None) => {}
        _ => return Err("tls needs both cert_file and key_file".into()),
    }
    b.build().map_err(|e| e.to_string())
}

/// Starts one task per destination; they stop when `stop` turns true.
pub fn spawn(
    store: &Storage,
    data_dir: &Path,
    configs: &[DestinationConfig],
    stop: watch::Receiver<bool>,
) -> Result<(Vec<Destination>, Vec<tokio::task::JoinHandle<()>>), String> {
    let mut dests = Vec::new();
    let mut tasks = Vec::new();
    let dir = data_dir.join("remote_write");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for cfg in configs {
        if !valid_name(&cfg.name) {
            return Err(format!(
                "remote write destination name {:?} must match [A-Za-z0-9_-]+",
                cfg.name
            ));
        }
        if dests.iter().any(|d: &Destination| d.name == cfg.name) {
            return Err(format!(
                "two remote write destinations are named {:?}",
                cfg.name
            ));
        }
        let auth = Auth::new(&cfg.auth).map_err(|e| format!("{}: {e}", cfg.name))?;
        let stats = Arc::new(DestinationStats::default());
        let cursor_file = dir.join(format!("{}.cursor", cfg.name));
        let cursor = read_cursor(&cursor_file)?;
        stats.delivered_seq.store(cursor, Relaxed);
        store.hold_wal(&cfg.name, cursor + 1);
        let sender = Sender {
            cfg: cfg.clone(),
            client: client(cfg).map_err(|e| format!("{}: {e}", cfg.name))?,
            auth,
            stats: stats.clone(),
            store: store.clone(),
            cursor_file,
            stop: stop.clone(),
            labels: HashMap::new(),
        };
        tracing::info!(destination = %cfg.name, url = %cfg.url, after_seq = cursor, "remote write starting");
        tasks.push(tokio::spawn(sender.run()));
        dests.push(Destination {
            name: cfg.name.clone(),
            stats,
        });
    }
    Ok((dests, tasks))
}

fn read_cursor(path: &Path) -> Result<u64, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            format!(
                "{} is damaged; delete it to resend what the log still holds",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the cursor file atomically (write, fsync, rename).
fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("cursor.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(seq.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Why a send loop ended early.
struct Stopped;

struct Sender {
    cfg: DestinationConfig,
    client: reqwest::Client,
    auth: Auth,
    stats: Arc<DestinationStats>,
    store: Storage,
    cursor_file: PathBuf,
    stop: watch::Receiver<bool>,
    /// Label sets (external labels applied) by series id.
    labels: HashMap<SeriesId, Arc<Vec<pb::Label>>>,
}

type Shard = Vec<(SeriesId, i64, f64)>;

impl Sender {
    async fn run(mut self) {
        let mut tailer = Some(
            self.store
                .wal_tailer(self.stats.delivered_seq.load(Relaxed)),
        );
        // About 14 bytes per sample in the log.
        let budget = self.cfg.max_round_samples.max(1) * 14;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let Some(mut t) = tailer.take() else { return };
            let read = tokio::task::spawn_blocking(move || {
                let r = t.next(budget);
                (t, r)
            })
            .await;
            let records = match read {
                Ok((t, Ok(r))) => {
                    tailer = Some(t);
                    r
                }
                Ok((t, Err(e))) => {
                    tracing::error!(destination = %self.cfg.name, error = %e, "cannot read the write-ahead log; retrying");
                    tailer = Some(t);
                    self.pause(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(destination = %self.cfg.name, error = %e, "log reader failed");
                    return;
                }
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                self.pause(Duration::from_millis(200)).await;
                continue;
            };
            self.learn_series(&records);
            let n = self.cfg.shards.max(1);
            let mut shards: Vec<Shard> = vec![Vec::new(); n];
            for rec in &records {
                for &(id, t, v) in &rec.samples {
                    shards[(id % n as u64) as usize].push((id, t, v));
                }
            }
            let batches: Vec<Vec<pb::WriteRequest>> =
                shards.iter().map(|s| self.requests(s)).collect();
            let newest = records
                .iter()
                .flat_map(|r| r.samples.iter().map(|s| s.1))
                .max();
            let results =
                futures_util::future::join_all(batches.into_iter().map(|b| self.send_all(b))).await;
            if results.iter().any(|r| r.is_err()) {
                return;
            }
            if let Err(e) = write_cursor(&self.cursor_file, last) {
                tracing::error!(destination = %self.cfg.name, error = %e, "cannot save the delivery cursor; samples may be sent again after a restart");
            }
            self.stats.delivered_seq.store(last, Relaxed);
            if let Some(t) = newest {
                self.stats.newest_sent_ms.fetch_max(t, Relaxed);
            }
            self.store.hold_wal(&self.cfg.name, last + 1);
        }
    }

    /// Series a record creates come with their labels: the tailer may read a record before
    /// the commit that wrote it has made its series visible in the store.
    fn learn_series(&mut self, records: &[kappie_storage::wal::Record]) {
        for rec in records {
            for (id, enc) in &rec.series {
                if let Ok(l) = kappie_storage::Labels::decode(enc) {
                    let labels = self.with_external(&l);
                    self.labels.insert(*id, labels);
                }
            }
        }
    }

    /// Sleeps, or returns early on stop.
    async fn pause(&mut self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.changed() => {}
        }
    }

    /// The requests of one shard: samples grouped by series in log order, at most
    /// `max_samples_per_send` per request.
    fn requests(&mut self, shard: &Shard) -> Vec<pb::WriteRequest> {
        let mut out = Vec::new();
        for chunk in shard.chunks(self.cfg.max_samples_per_send.max(1)) {
            let mut idx: HashMap<SeriesId, usize> = HashMap::new();
            let mut req = pb::WriteRequest::default();
            for &(id, t, v) in chunk {
                let Some(labels) = self.labels_of(id) else {
                    self.stats.samples_dropped.fetch_add(1, Relaxed);
                    continue;
                };
                let i = *idx.entry(id).or_insert_with(|| {
                    req.timeseries.push(pb::TimeSeries {
                        labels: labels.to_vec(),
                        samples: Vec::new(),
                    });
                    req.timeseries.len() - 1
                });
                req.timeseries[i].samples.push(pb::Sample {
                    value: v,
                    timestamp: t,
                });
            }
            if !req.timeseries.is_empty() {
                out.push(req);
            }
        }
        out
    }

    fn labels_of(&mut self, id: SeriesId) -> Option<Arc<Vec<pb::Label>>> {
        if let Some(l) = self.labels.get(&id) {
            return Some(l.clone());
        }
        let l = self.store.series_labels(id)?;
        let labels = self.with_external(&l);
        self.labels.insert(id, labels.clone());
        Some(labels)
    }

    /// The label set as sent: the series' labels plus external labels it lacks.
    fn with_external(&self, l: &kappie_storage::Labels) -> Arc<Vec<pb::Label>> {
        let mut pairs: BTreeMap<String, String> = l
            .iter()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        for (k, v) in &self.cfg.external_labels {
            pairs.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Arc::new(
            pairs
                .into_iter()
                .map(|(name, value)| pb::Label { name, value })
                .collect::<Vec<_>>(),
        )
    }

    async fn send_all(&self, reqs: Vec<pb::WriteRequest>) -> Result<(), Stopped> {
        for r in reqs {
            let n = r.timeseries.iter().map(|t| t.samples.len()).sum::<usize>() as u64;
            let body = snap::raw::Encoder::new()
                .compress_vec(&r.encode_to_vec())
                .expect("snappy of an in-memory buffer");
            self.send(body, n).await?;
        }
        Ok(())
    }

    /// Sends one request until it is delivered or refused for good.
    async fn send(&self, body: Vec<u8>, n: u64) -> Result<(), Stopped> {
        let name = &self.cfg.name;
        let min = Duration::from_millis(self.cfg.min_backoff_ms.max(1));
        let max = Duration::from_millis(self.cfg.max_backoff_ms.max(self.cfg.min_backoff_ms));
        let mut backoff = min;
        loop {
            if *self.stop.borrow() {
                return Err(Stopped);
            }
            let req = self
                .client
                .post(&self.cfg.url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body.clone());
            let wait = match self.auth.apply(req).await {
                Err(e) => {
                    tracing::warn!(destination = %name, error = %e, "no credentials; retrying");
                    Some(jitter(backoff))
                }
                Ok(req) => match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        self.stats.samples_sent.fetch_add(n, Relaxed);
                        return Ok(());
                    }
                    Ok(resp) if resp.status().as_u16() == 429 => {
                        let after = retry_after(resp.headers())
                            .map(|d| d.min(Duration::from_secs(self.cfg.max_retry_after_seconds)));
                        tracing::info!(destination = %name, retry_after = ?after, "destination asks to slow down (429)");
                        Some(after.unwrap_or_else(|| jitter(backoff)))
                    }
                    Ok(resp) if resp.status().is_server_error() => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        tracing::warn!(destination = %name, %status, body = %text.trim(), "destination failed; retrying");
                        self.stats.samples_failed.fetch_add(n, Relaxed);
                        Some(jitter(backoff))
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        tracing::error!(destination = %name, %status, body = %text.trim(), samples = n,
                            "destination refused the samples; dropping them (not retried)");
                        self.stats.samples_dropped.fetch_add(n, Relaxed);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(destination = %name, error = %e, "destination unreachable; retrying");
                        self.stats.samples_failed.fetch_add(n, Relaxed);
                        Some(jitter(backoff))
                    }
                },
            };
            self.stats.retries.fetch_add(1, Relaxed);
            if let Some(d) = wait {
                let mut stop = self.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.changed() => return Err(Stopped),
                }
            }
            backoff = (backoff * 2).min(max);
        }
    }
}

/// Half of `d` plus a random part of the other half.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_headers_are_checked() {
        let with = |k: &str, v: &str| {
            let mut cfg = DestinationConfig::plain("mimir", "http://127.0.0.1:9/");
            cfg.headers.insert(k.into(), v.into());
            extra_headers(&cfg)
        };
        let ok = with("X-Scope-OrgID", "tenant-a").unwrap();
        assert_eq!(ok.get("x-scope-orgid").unwrap(), "tenant-a");
        for reserved in [
            "Authorization",
            "content-type",
            "X-Prometheus-Remote-Write-Version",
        ] {
            let e = with(reserved, "x").unwrap_err();
            assert!(e.contains("set by Kappie"), "{e}");
        }
        assert!(with("bad header", "x")
            .unwrap_err()
            .contains("not an HTTP header name"));
        assert!(with("X-Ok", "line\nbreak")
            .unwrap_err()
            .contains("not valid"));
    }

    /// Regression: samples of a series created by the record being sent were dropped as
    /// "series gone" when the tailer read the record before the store showed the series.
    #[test]
    fn series_defined_in_a_record_are_sent_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let store = Storage::open(dir.path(), &Default::default()).unwrap();
        let (_tx, stop) = watch::channel(false);
        let mut cfg = DestinationConfig::plain("t", "http://127.0.0.1:9/");
        cfg.external_labels.insert("cluster".into(), "c1".into());
        cfg.external_labels.insert("job".into(), "ignored".into());
        let mut sender = Sender {
            client: client(&cfg).unwrap(),
            auth: Auth::new(&cfg.auth).unwrap(),
            cfg,
            stats: Default::default(),
            store,
            cursor_file: dir.path().join("t.cursor"),
            stop,
            labels: HashMap::new(),
        };
        let labels = kappie_storage::Labels::new([("__name__", "m"), ("job", "j")]).unwrap();
        let rec = kappie_storage::wal::Record {
            seq: 1,
            series: vec![(42, labels.encode())],
            meta: vec![],
            samples: vec![(42, 1_000, 1.5), (42, 2_000, 2.5)],
        };
        sender.learn_series(std::slice::from_ref(&rec));
        let reqs = sender.requests(&rec.samples);
        assert_eq!(sender.stats.samples_dropped.load(Relaxed), 0);
        assert_eq!(reqs.len(), 1);
        let ts = &reqs[0].timeseries[0];
        let names: Vec<(&str, &str)> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("__name__", "m"), ("cluster", "c1"), ("job", "j")]
        );
        assert_eq!(ts.samples.len(), 2);
    }
}
