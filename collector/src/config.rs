//! The collector's settings: defaults, then a TOML config file, then environment and flags.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Command line; every flag can also come from the environment (`KAPPIE_*`) or the file
/// named by `--config`.
#[derive(Debug, clap::Parser)]
#[command(name = "kappie-collector", version, about = "Kappie cluster collector")]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "KAPPIE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long, env = "KAPPIE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the Prometheus HTTP API.
    #[arg(long, env = "KAPPIE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Address of the gRPC ingest endpoint the node shippers push to.
    #[arg(long, env = "KAPPIE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "KAPPIE_GRPC_MAX_MESSAGE_BYTES")]
    pub grpc_max_message_bytes: Option<usize>,
    /// Longest one gRPC call may take, in seconds (then DEADLINE_EXCEEDED).
    #[arg(long, env = "KAPPIE_GRPC_REQUEST_TIMEOUT_SECONDS")]
    pub grpc_request_timeout_seconds: Option<u64>,
    /// gRPC calls served at once on one connection (one shipper); more wait.
    #[arg(long, env = "KAPPIE_GRPC_MAX_CONCURRENT_CALLS_PER_CONNECTION")]
    pub grpc_max_concurrent_calls_per_connection: Option<usize>,
    /// Most labels one series may have, `__name__` included (remote write and gRPC ingest;
    /// then 400 / INVALID_ARGUMENT).
    #[arg(long, env = "KAPPIE_MAX_LABELS_PER_SERIES")]
    pub max_labels_per_series: Option<usize>,
    /// Longest label name, in bytes (remote write and gRPC ingest).
    #[arg(long, env = "KAPPIE_MAX_LABEL_NAME_BYTES")]
    pub max_label_name_bytes: Option<usize>,
    /// Longest label value, in bytes (remote write and gRPC ingest).
    #[arg(long, env = "KAPPIE_MAX_LABEL_VALUE_BYTES")]
    pub max_label_value_bytes: Option<usize>,
    /// Most series one shipper session may define.
    #[arg(long, env = "KAPPIE_MAX_SERIES_PER_SHIPPER")]
    pub max_series_per_shipper: Option<usize>,
    /// gRPC pushes applied at once (each shipper's pushes still one at a time); more wait
    /// their turn. Concurrent pushes share the store's log fsync (group commit).
    #[arg(long, env = "KAPPIE_INGEST_MAX_CONCURRENCY")]
    pub ingest_max_concurrency: Option<usize>,
    /// Samples per second one shipper may push on average (counter deltas and gauge values);
    /// faster pushes get RESOURCE_EXHAUSTED with a time to retry after. 0: no limit.
    #[arg(long, env = "KAPPIE_MAX_SAMPLES_PER_SHIPPER_PER_SECOND")]
    pub max_samples_per_shipper_per_second: Option<u32>,
    /// Samples one shipper may push at once above its rate (the token bucket's size): a
    /// shipper catching up after an outage sends its queue at this burst, then at the rate.
    #[arg(long, env = "KAPPIE_SHIPPER_BURST_SAMPLES")]
    pub shipper_burst_samples: Option<u32>,
    /// How far a batch timestamp may be ahead of the collector's clock, in seconds.
    #[arg(long, env = "KAPPIE_MAX_FUTURE_SKEW_SECONDS")]
    pub max_future_skew_seconds: Option<u64>,
    /// Largest remote write body (compressed or decompressed), in bytes.
    #[arg(long, env = "KAPPIE_MAX_REMOTE_WRITE_BYTES")]
    pub max_remote_write_bytes: Option<usize>,
    /// Longest a PromQL query may run, in seconds (then 503 `timeout`).
    #[arg(long, env = "KAPPIE_QUERY_TIMEOUT_SECONDS")]
    pub query_timeout_seconds: Option<u64>,
    /// Queries evaluated at once; more wait their turn (the wait counts against the query
    /// timeout), as Prometheus's `--query.max-concurrency`; default 20.
    #[arg(long, env = "KAPPIE_QUERY_MAX_CONCURRENCY")]
    pub query_max_concurrency: Option<usize>,
    /// Most samples one PromQL query may hold in memory (then 422 `execution`).
    #[arg(long, env = "KAPPIE_QUERY_MAX_SAMPLES")]
    pub query_max_samples: Option<usize>,
    /// Most series one PromQL query may return (then 422 `execution`).
    #[arg(long, env = "KAPPIE_QUERY_MAX_SERIES")]
    pub query_max_series: Option<usize>,
    /// Most tokens one PromQL query (or `match[]` selector) may have (then 400 `bad_data`):
    /// bounds parse time and nesting depth.
    #[arg(long, env = "KAPPIE_QUERY_MAX_TOKENS")]
    pub query_max_tokens: Option<usize>,
    /// Most samples one remote read SAMPLES response may carry (then 400).
    #[arg(long, env = "KAPPIE_REMOTE_READ_MAX_SAMPLES")]
    pub remote_read_max_samples: Option<usize>,
    /// Remote reads served at once; more wait.
    #[arg(long, env = "KAPPIE_REMOTE_READ_CONCURRENCY")]
    pub remote_read_concurrency: Option<usize>,
    /// Size at which a STREAMED_XOR_CHUNKS frame is cut, bytes.
    #[arg(long, env = "KAPPIE_REMOTE_READ_MAX_FRAME_BYTES")]
    pub remote_read_max_frame_bytes: Option<usize>,
    /// Remote read response types offered, comma-separated (SAMPLES, STREAMED_XOR_CHUNKS).
    #[arg(long, env = "KAPPIE_REMOTE_READ_RESPONSE_TYPES", value_delimiter = ',')]
    pub remote_read_response_types: Option<Vec<String>>,
    /// A remote write destination without auth (repeatable); destinations with auth, TLS
    /// or external labels go in the config file as `[[remote_write]]`.
    #[arg(
        long = "remote-write-url",
        env = "KAPPIE_REMOTE_WRITE_URL",
        value_delimiter = ','
    )]
    pub remote_write_urls: Option<Vec<String>>,
    /// A TOML file of `[[remote_write]]` tables only, added to the config file's (for
    /// Kubernetes: a ConfigMap of destinations apart from the settings).
    #[arg(long, env = "KAPPIE_REMOTE_WRITE_CONFIG")]
    pub remote_write_config: Option<PathBuf>,
    /// Most bytes of write-ahead log kept for remote write destinations that are behind;
    /// past it their oldest samples are dropped (and counted).
    #[arg(long, env = "KAPPIE_REMOTE_WRITE_MAX_BACKLOG_BYTES")]
    pub remote_write_max_backlog_bytes: Option<u64>,
    /// Seconds between store maintenance runs (cutting idle chunks, making them durable,
    /// truncating the log, compaction, retention); default 60.
    #[arg(long, env = "KAPPIE_MAINTENANCE_INTERVAL_SECONDS")]
    pub maintenance_interval_seconds: Option<u64>,
    /// Seconds a stop (SIGTERM) waits for open connections and in-flight requests before
    /// it closes the store anyway; default 10 (a pod gets 30 s in all).
    #[arg(long, env = "KAPPIE_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// How long samples are kept, in seconds.
    #[arg(long, env = "KAPPIE_RETENTION_SECONDS")]
    pub retention_seconds: Option<u64>,
    /// Largest size of the data directory in bytes (0: no limit); past it the oldest blocks go.
    #[arg(long, env = "KAPPIE_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// sled page cache size in bytes.
    #[arg(long, env = "KAPPIE_CACHE_CAPACITY_BYTES")]
    pub cache_capacity_bytes: Option<u64>,
    /// No effect since 2026-12-01, when staged chunks moved from a sled database per chunk
    /// window into append-only files (read through the kernel's page cache); accepted so that
    /// existing settings still start, with a warning.
    #[arg(long, env = "KAPPIE_BLOCK_CACHE_CAPACITY_BYTES", hide = true)]
    pub block_cache_capacity_bytes: Option<u64>,
    /// Size at which the write-ahead log starts a new segment file, bytes. The log is
    /// truncated a whole segment at a time, so smaller segments free disk sooner once their
    /// samples are durable in chunks.
    #[arg(long, env = "KAPPIE_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// Zero-fill write-ahead log segments ahead of use, in the background, so that the
    /// fsync every acknowledgement waits for overwrites blocks instead of growing the file
    /// (about half the fsync time on ext4). The next segment is prepared once the current
    /// one is half written: a log that stays small holds no zeros, a busy one up to two
    /// segments of disk.
    #[arg(long, env = "KAPPIE_WAL_PREALLOCATE")]
    pub wal_preallocate: Option<bool>,
    /// Requests to the HTTP API and `/metrics` served at once; past it, 503 at once (the
    /// health endpoints are not counted).
    #[arg(long, env = "KAPPIE_HTTP_MAX_CONCURRENT_REQUESTS")]
    pub http_max_concurrent_requests: Option<usize>,
    /// Longest an HTTP API request may take until its response starts, body included, in
    /// seconds (then 503); queries also have --query-timeout-seconds.
    #[arg(long, env = "KAPPIE_HTTP_REQUEST_TIMEOUT_SECONDS")]
    pub http_request_timeout_seconds: Option<u64>,
    /// Longest a client may take to send a request's headers, in seconds; then the
    /// connection is closed (slow clients cannot hold connections open).
    #[arg(long, env = "KAPPIE_HTTP_HEADER_TIMEOUT_SECONDS")]
    pub http_header_timeout_seconds: Option<u64>,
    /// PEM certificate chain for TLS on the HTTP and gRPC ports (with --tls-key-file); read
    /// again when it changes. Plain text when unset.
    #[arg(long, env = "KAPPIE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "KAPPIE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA file: shippers must present a client certificate it signed on the gRPC port,
    /// and may write only as the node its DNS name says (shipper id, Hello's node name and
    /// every series' node_name label); others get PERMISSION_DENIED. Needs TLS.
    #[arg(long, env = "KAPPIE_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// JWK set file of the issuer of shipper ServiceAccount tokens, read again when it
    /// changes: shippers must then send a token (their --collector-token-file) and may write
    /// only as the node its `kubernetes.io.node.name` claim names; others get
    /// UNAUTHENTICATED or PERMISSION_DENIED. Needs --shipper-token-issuer.
    #[arg(long, env = "KAPPIE_SHIPPER_TOKEN_JWKS_FILE")]
    pub shipper_token_jwks_file: Option<PathBuf>,
    /// URL of that JWK set instead of a file (in Kubernetes
    /// `https://kubernetes.default.svc/openid/v1/jwks`), fetched at start, every 5 minutes and
    /// when a token names a key it lacks. Without --shipper-token-issuer the issuer is read
    /// from the OpenID discovery document on the same host.
    #[arg(long, env = "KAPPIE_SHIPPER_TOKEN_JWKS_URL")]
    pub shipper_token_jwks_url: Option<String>,
    /// PEM CA bundle trusted for --shipper-token-jwks-url instead of the system's roots (the
    /// API server's CA); read at each fetch.
    #[arg(long, env = "KAPPIE_SHIPPER_TOKEN_CA_FILE")]
    pub shipper_token_ca_file: Option<PathBuf>,
    /// File holding a bearer token sent when fetching --shipper-token-jwks-url (the
    /// collector's own projected ServiceAccount token); read at each fetch.
    #[arg(long, env = "KAPPIE_SHIPPER_TOKEN_BEARER_FILE")]
    pub shipper_token_bearer_file: Option<PathBuf>,
    /// The `iss` shipper tokens must have (e.g. https://kubernetes.default.svc.cluster.local).
    #[arg(long, env = "KAPPIE_SHIPPER_TOKEN_ISSUER")]
    pub shipper_token_issuer: Option<String>,
    /// The audience shipper tokens must have (`aud`); default `kappie`.
    #[arg(long, env = "KAPPIE_SHIPPER_TOKEN_AUDIENCE")]
    pub shipper_token_audience: Option<String>,
    /// Allowed `sub` of shipper tokens, comma separated; default
    /// `system:serviceaccount:kappie:kappie-shipper`.
    #[arg(
        long = "shipper-token-subject",
        env = "KAPPIE_SHIPPER_TOKEN_SUBJECT",
        value_delimiter = ','
    )]
    pub shipper_token_subjects: Option<Vec<String>>,
    /// A file holding the bearer token HTTP API clients must send (`Authorization: Bearer
    /// ...`); read again when it changes. Off when neither this nor the users file is set.
    #[arg(long, env = "KAPPIE_HTTP_AUTH_TOKEN_FILE")]
    pub http_auth_token_file: Option<PathBuf>,
    /// A file of basic auth users, `user:bcrypt-hash` per line (`htpasswd -nB user`); read
    /// again when it changes. The health endpoints never ask for credentials.
    #[arg(long, env = "KAPPIE_HTTP_AUTH_USERS_FILE")]
    pub http_auth_users_file: Option<PathBuf>,
    /// Seconds between writes of the collector's own metrics (`/metrics`) into its store,
    /// labelled `job="kappie-collector"` and `instance`; 0 turns it off.
    #[arg(long, env = "KAPPIE_SELF_SCRAPE_INTERVAL_SECONDS")]
    pub self_scrape_interval_seconds: Option<u64>,
    /// The `instance` label of the collector's own metrics; default the hostname (the pod
    /// name on Kubernetes).
    #[arg(long, env = "KAPPIE_SELF_SCRAPE_INSTANCE")]
    pub self_scrape_instance: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "KAPPIE_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The resolved settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub grpc_max_message_bytes: usize,
    pub grpc_request_timeout_seconds: u64,
    pub max_labels_per_series: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub grpc_max_concurrent_calls_per_connection: usize,
    pub max_series_per_shipper: usize,
    pub ingest_max_concurrency: usize,
    pub max_samples_per_shipper_per_second: u32,
    pub shipper_burst_samples: u32,
    pub max_future_skew_seconds: u64,
    pub cache_capacity_bytes: u64,
    pub block_cache_capacity_bytes: u64,
    pub wal_segment_bytes: u64,
    pub wal_preallocate: bool,
    pub maintenance_interval_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub retention_seconds: u64,
    pub retention_bytes: u64,
    pub max_remote_write_bytes: usize,
    pub query_timeout_seconds: u64,
    pub query_max_concurrency: usize,
    pub query_max_samples: usize,
    pub query_max_series: usize,
    pub query_max_tokens: usize,
    pub http_max_concurrent_requests: usize,
    pub http_request_timeout_seconds: u64,
    pub http_header_timeout_seconds: u64,
    pub remote_read_max_samples: usize,
    pub remote_read_concurrency: usize,
    pub remote_read_max_frame_bytes: usize,
    pub remote_read_response_types: Vec<String>,
    pub remote_write_urls: Vec<String>,
    pub remote_write_max_backlog_bytes: u64,
    /// Remote write destinations (config file only).
    pub remote_write: Vec<crate::remote::write::DestinationConfig>,
    pub remote_write_config: Option<PathBuf>,
    pub self_scrape_interval_seconds: u64,
    pub self_scrape_instance: String,
    pub log_format: String,
    pub http_auth_token_file: Option<PathBuf>,
    pub http_auth_users_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub shipper_token_jwks_file: Option<PathBuf>,
    pub shipper_token_jwks_url: Option<String>,
    pub shipper_token_ca_file: Option<PathBuf>,
    pub shipper_token_bearer_file: Option<PathBuf>,
    pub shipper_token_issuer: Option<String>,
    pub shipper_token_audience: String,
    pub shipper_token_subjects: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 9095)),
            grpc_max_message_bytes: 16 * 1024 * 1024,
            grpc_request_timeout_seconds: 60,
            max_labels_per_series: crate::limits::LabelLimits::default().max_labels,
            max_label_name_bytes: crate::limits::LabelLimits::default().max_name_bytes,
            max_label_value_bytes: crate::limits::LabelLimits::default().max_value_bytes,
            grpc_max_concurrent_calls_per_connection: 16,
            max_series_per_shipper: 100_000,
            ingest_max_concurrency: 8,
            max_samples_per_shipper_per_second: 10_000,
            shipper_burst_samples: 200_000,
            max_future_skew_seconds: 300,
            cache_capacity_bytes: 8 * 1024 * 1024,
            block_cache_capacity_bytes: 2 * 1024 * 1024,
            wal_segment_bytes: kappie_storage::StorageConfig::default().wal_segment_bytes,
            wal_preallocate: kappie_storage::StorageConfig::default().wal_preallocate,
            maintenance_interval_seconds: 60,
            shutdown_grace_seconds: 10,
            retention_seconds: 15 * 24 * 3600,
            retention_bytes: 0,
            max_remote_write_bytes: 32 << 20,
            query_timeout_seconds: 120,
            query_max_concurrency: crate::promql::DEFAULT_QUERY_CONCURRENCY,
            query_max_samples: 50_000_000,
            query_max_series: 1_000_000,
            query_max_tokens: crate::promql::QueryLimits::default().max_tokens,
            http_max_concurrent_requests: 512,
            http_request_timeout_seconds: 300,
            http_header_timeout_seconds: 30,
            remote_read_max_samples: 50_000_000,
            remote_read_concurrency: 10,
            remote_read_max_frame_bytes: 1 << 20,
            remote_read_response_types: vec!["STREAMED_XOR_CHUNKS".into(), "SAMPLES".into()],
            remote_write_urls: Vec::new(),
            remote_write_max_backlog_bytes: 1 << 30,
            remote_write: Vec::new(),
            remote_write_config: None,
            self_scrape_interval_seconds: 15,
            self_scrape_instance: String::new(),
            log_format: "text".into(),
            http_auth_token_file: None,
            http_auth_users_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            shipper_token_jwks_file: None,
            shipper_token_jwks_url: None,
            shipper_token_ca_file: None,
            shipper_token_bearer_file: None,
            shipper_token_issuer: None,
            shipper_token_audience: "kappie".into(),
            shipper_token_subjects: vec!["system:serviceaccount:kappie:kappie-shipper".into()],
        }
    }
}

impl Config {
    /// Every remote write destination: the file's, then one per `--remote-write-url`.
    pub fn destinations(&self) -> Vec<crate::remote::write::DestinationConfig> {
        let mut out = self.remote_write.clone();
        for (i, url) in self.remote_write_urls.iter().enumerate() {
            out.push(crate::remote::write::DestinationConfig::plain(
                &format!("url-{i}"),
                url,
            ));
        }
        out
    }

    /// The `instance` label of the self-scrape: the setting, else the hostname.
    pub fn self_scrape_instance(&self) -> String {
        if !self.self_scrape_instance.is_empty() {
            return self.self_scrape_instance.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kappie-collector".into())
    }

    /// The label limits these settings give.
    pub fn label_limits(&self) -> crate::limits::LabelLimits {
        crate::limits::LabelLimits {
            max_labels: self.max_labels_per_series,
            max_name_bytes: self.max_label_name_bytes,
            max_value_bytes: self.max_label_value_bytes,
        }
    }

    /// The remote read limits these settings give.
    pub fn remote_read_limits(&self) -> anyhow::Result<crate::api::RemoteReadLimits> {
        Ok(crate::api::RemoteReadLimits {
            max_request_bytes: self.max_remote_write_bytes,
            max_samples: self.remote_read_max_samples,
            max_frame_bytes: self.remote_read_max_frame_bytes,
            response_types: crate::remote::read::parse_response_types(
                &self.remote_read_response_types,
            )
            .map_err(anyhow::Error::msg)?,
        })
    }

    /// The shipper authentication these settings ask for, and the key set to keep fetching
    /// (with --shipper-token-jwks-url).
    pub fn shipper_auth(
        &self,
    ) -> anyhow::Result<(
        crate::shipper_auth::ShipperAuth,
        Option<std::sync::Arc<crate::shipper_auth::jwks::Fetched>>,
    )> {
        use crate::shipper_auth::{jwks, token};
        let (keys, fetched) = match (&self.shipper_token_jwks_file, &self.shipper_token_jwks_url) {
            (Some(f), _) => (Some(jwks::Keys::file(f.clone())?), None),
            (None, Some(url)) => {
                let f = jwks::Fetched::new(jwks::UrlSource {
                    url: url.clone(),
                    ca_file: self.shipper_token_ca_file.clone(),
                    bearer_file: self.shipper_token_bearer_file.clone(),
                    discover_issuer: self.shipper_token_issuer.is_none(),
                });
                (Some(jwks::Keys::Url(f.clone())), Some(f))
            }
            (None, None) => (None, None),
        };
        let tokens = keys.map(|k| {
            std::sync::Arc::new(token::Verifier::new(
                k,
                token::TokenPolicy {
                    issuer: self.shipper_token_issuer.clone(),
                    audience: self.shipper_token_audience.clone(),
                    subjects: self.shipper_token_subjects.clone(),
                },
            ))
        });
        Ok((
            crate::shipper_auth::ShipperAuth {
                client_certificates: self.tls_client_ca_file.is_some(),
                tokens,
            },
            fetched,
        ))
    }

    /// The PromQL limits these settings give.
    pub fn query_limits(&self) -> crate::promql::QueryLimits {
        crate::promql::QueryLimits {
            timeout: std::time::Duration::from_secs(self.query_timeout_seconds),
            max_samples: self.query_max_samples,
            max_series: self.query_max_series,
            max_tokens: self.query_max_tokens,
            ..Default::default()
        }
    }

    /// Defaults, overridden by the config file, overridden by environment and flags.
    pub fn resolve(cli: Cli) -> anyhow::Result<Config> {
        let mut c = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("config file {} is invalid: {e}", path.display())
                })?
            }
            None => Config::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = cli.$f { c.$f = v; } )* };
        }
        take!(
            data_dir,
            http_listen,
            grpc_listen,
            grpc_max_message_bytes,
            grpc_request_timeout_seconds,
            max_labels_per_series,
            max_label_name_bytes,
            max_label_value_bytes,
            grpc_max_concurrent_calls_per_connection,
            max_series_per_shipper,
            ingest_max_concurrency,
            max_samples_per_shipper_per_second,
            shipper_burst_samples,
            max_future_skew_seconds,
            cache_capacity_bytes,
            block_cache_capacity_bytes,
            wal_segment_bytes,
            wal_preallocate,
            maintenance_interval_seconds,
            shutdown_grace_seconds,
            retention_seconds,
            retention_bytes,
            max_remote_write_bytes,
            query_timeout_seconds,
            query_max_concurrency,
            query_max_samples,
            query_max_series,
            query_max_tokens,
            http_max_concurrent_requests,
            http_request_timeout_seconds,
            http_header_timeout_seconds,
            remote_read_max_samples,
            remote_read_concurrency,
            remote_read_max_frame_bytes,
            remote_read_response_types,
            remote_write_urls,
            remote_write_max_backlog_bytes,
            self_scrape_interval_seconds,
            self_scrape_instance,
            log_format,
            shipper_token_audience,
            shipper_token_subjects
        );
        if let Some(p) = cli.remote_write_config {
            c.remote_write_config = Some(p);
        }
        if let Some(path) = &c.remote_write_config {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Destinations {
                #[serde(default)]
                remote_write: Vec<crate::remote::write::DestinationConfig>,
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read remote write config {}: {e}", path.display())
            })?;
            let d: Destinations = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "remote write config {} is invalid (it holds [[remote_write]] tables only): {e}",
                    path.display()
                )
            })?;
            c.remote_write.extend(d.remote_write);
        }
        if c.wal_segment_bytes < 1 << 20 {
            anyhow::bail!("wal_segment_bytes must be at least 1 MiB (1048576)");
        }
        if let Some(p) = cli.http_auth_token_file {
            c.http_auth_token_file = Some(p);
        }
        if let Some(p) = cli.http_auth_users_file {
            c.http_auth_users_file = Some(p);
        }
        if let Some(p) = cli.tls_cert_file {
            c.tls_cert_file = Some(p);
        }
        if let Some(p) = cli.tls_key_file {
            c.tls_key_file = Some(p);
        }
        if let Some(p) = cli.tls_client_ca_file {
            c.tls_client_ca_file = Some(p);
        }
        macro_rules! some {
            ($($f:ident),*) => { $( if let Some(v) = cli.$f { c.$f = Some(v); } )* };
        }
        some!(
            shipper_token_jwks_file,
            shipper_token_jwks_url,
            shipper_token_ca_file,
            shipper_token_bearer_file,
            shipper_token_issuer
        );
        if c.shipper_token_jwks_file.is_some() && c.shipper_token_jwks_url.is_some() {
            anyhow::bail!("set one of --shipper-token-jwks-file and --shipper-token-jwks-url");
        }
        if c.shipper_token_jwks_file.is_some() && c.shipper_token_issuer.is_none() {
            anyhow::bail!(
                "--shipper-token-jwks-file needs --shipper-token-issuer (the `iss` of the \
                 tokens: `kubectl get --raw /.well-known/openid-configuration`)"
            );
        }
        if c.shipper_token_audience.is_empty() || c.shipper_token_subjects.is_empty() {
            anyhow::bail!("--shipper-token-audience and --shipper-token-subject must not be empty");
        }
        if c.grpc_request_timeout_seconds == 0 || c.grpc_max_concurrent_calls_per_connection == 0 {
            anyhow::bail!(
                "grpc_request_timeout_seconds and grpc_max_concurrent_calls_per_connection must be at least 1"
            );
        }
        if c.http_max_concurrent_requests == 0
            || c.http_request_timeout_seconds == 0
            || c.http_header_timeout_seconds == 0
        {
            anyhow::bail!(
                "http_max_concurrent_requests, http_request_timeout_seconds and \
                 http_header_timeout_seconds must be at least 1"
            );
        }
        if c.ingest_max_concurrency == 0 {
            anyhow::bail!("ingest_max_concurrency must be at least 1");
        }
        if c.query_max_concurrency == 0 {
            anyhow::bail!("query_max_concurrency must be at least 1");
        }
        if c.query_max_tokens == 0 {
            anyhow::bail!("query_max_tokens must be at least 1");
        }
        if c.maintenance_interval_seconds == 0 {
            anyhow::bail!("maintenance_interval_seconds must be at least 1");
        }
        if !matches!(c.log_format.as_str(), "text" | "json") {
            anyhow::bail!("log_format must be text or json, not {:?}", c.log_format);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    /// The Mimir example of `docs/azure-monitor.md` is a valid config file.
    #[test]
    fn the_documented_mimir_destination_parses() {
        let doc = include_str!("../../docs/azure-monitor.md");
        let start = doc.find("name = \"mimir\"").expect("example in the doc");
        let block = &doc[start..];
        let toml_text = format!("[[remote_write]]\n{}", &block[..block.find("```").unwrap()]);
        let c: super::Config = toml::from_str(&toml_text).expect("parses");
        let d = &c.remote_write[0];
        assert_eq!(d.headers.get("X-Scope-OrgID").unwrap(), "team-network");
        assert!(crate::remote::write::extra_headers(d).is_ok());
    }

    /// The Azure Monitor component's destinations file loads through
    /// `--remote-write-config` and adds to the config file's destinations.
    #[test]
    fn the_kubernetes_remote_write_file_loads() {
        use clap::Parser;
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/kubernetes/components/azure-monitor/remote-write.toml"
        );
        let cli = super::Cli::parse_from([
            "kappie-collector",
            "--remote-write-config",
            file,
            "--remote-write-url",
            "http://mimir.example/api/v1/push",
        ]);
        let c = super::Config::resolve(cli).expect("resolves");
        let d = c.destinations();
        assert_eq!(d.len(), 2, "the file's one and the flag's one");
        assert_eq!(d[0].name, "azure-monitor");
        assert!(matches!(
            d[0].auth,
            crate::remote::auth::AuthConfig::WorkloadIdentity { .. }
        ));
        let bad = std::env::temp_dir().join(format!("kappie-rw-{}.toml", std::process::id()));
        std::fs::write(&bad, "retention_seconds = 5\n").unwrap();
        let cli = super::Cli::parse_from([
            "kappie-collector",
            "--remote-write-config",
            bad.to_str().unwrap(),
        ]);
        let e = super::Config::resolve(cli).unwrap_err().to_string();
        let _ = std::fs::remove_file(&bad);
        assert!(e.contains("[[remote_write]] tables only"), "{e}");
    }
}
