//! The shipper's settings: defaults, then a TOML config file, then environment and flags.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Command line; every flag can also come from the environment or the `--config` file.
#[derive(Debug, clap::Parser)]
#[command(name = "kappie-shipper", version, about = "Kappie node shipper")]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "KAPPIE_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC address of the collector (`https://` when it serves TLS).
    #[arg(long, env = "KAPPIE_COLLECTOR")]
    pub collector: Option<String>,
    /// PEM file of the CA that signed the collector's certificate (for an `https://`
    /// collector address).
    #[arg(long, env = "KAPPIE_COLLECTOR_CA_FILE")]
    pub collector_ca_file: Option<PathBuf>,
    /// PEM client certificate naming this node (a DNS name equal to the node name), for a
    /// collector that requires one (its --tls-client-ca-file).
    #[arg(long, env = "KAPPIE_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of --client-cert-file.
    #[arg(long, env = "KAPPIE_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// File holding a token sent to the collector as `authorization: Bearer` (a projected
    /// ServiceAccount token naming this node, for a collector with
    /// --shipper-token-jwks-url or -file); read again at each Hello and at least every
    /// minute, as the kubelet rotates it.
    #[arg(long, env = "KAPPIE_COLLECTOR_TOKEN_FILE")]
    pub collector_token_file: Option<PathBuf>,
    /// Collection interval (`10s`, `1m`).
    #[arg(long, env = "KAPPIE_INTERVAL", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Local file with the counter baselines and unacknowledged batches.
    #[arg(long, env = "KAPPIE_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Kubernetes node name (`node_name` label); defaults to the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// `cluster` label.
    #[arg(long, env = "KAPPIE_CLUSTER")]
    pub cluster: Option<String>,
    /// Identity for exactly-once delivery; defaults to the node name.
    #[arg(long, env = "KAPPIE_SHIPPER_ID")]
    pub shipper_id: Option<String>,
    /// How many remote address:port series `kappie_tcp_connection_remote` keeps.
    #[arg(long, env = "KAPPIE_TOP_REMOTES")]
    pub top_remotes: Option<usize>,
    /// Memory budget of the unacknowledged queue, in bytes; past it unsent batches merge.
    #[arg(long, env = "KAPPIE_QUEUE_MAX_BYTES")]
    pub queue_max_bytes: Option<usize>,
    /// Longest wait between retries when the collector is unreachable.
    #[arg(long, env = "KAPPIE_MAX_BACKOFF", value_parser = humantime::parse_duration)]
    pub max_backoff: Option<Duration>,
    /// Sources to switch off, comma separated (`netstat,sockets,interfaces,ebpf,cilium,self`,
    /// and `windows` (HNS and VFP) on Windows; `self` is the shipper's own metrics, pushed
    /// with its data).
    #[arg(long, env = "KAPPIE_DISABLE_SOURCES", value_delimiter = ',')]
    pub disable_sources: Option<Vec<String>>,
    /// Interfaces for the eBPF forward and TCP-flag counters, comma separated; a trailing
    /// `*` matches a prefix. Default: the interfaces that carry a default route.
    #[arg(long, env = "KAPPIE_EBPF_INTERFACES", value_delimiter = ',')]
    pub ebpf_interfaces: Option<Vec<String>>,
    /// Exit with the reason when eBPF cannot start (a program refused, no interface to
    /// attach to, the drop program not loaded) instead of warning and going on with the
    /// /proc and sysfs sources. `--ebpf-required` alone means true.
    #[arg(long, env = "KAPPIE_EBPF_REQUIRED", num_args = 0..=1, default_missing_value = "true")]
    pub ebpf_required: Option<bool>,
    /// bpffs directory where the eBPF maps and attachments are pinned.
    #[arg(long, env = "KAPPIE_EBPF_PIN_DIR")]
    pub ebpf_pin_dir: Option<PathBuf>,
    /// Where the host's /proc is.
    #[arg(long, env = "KAPPIE_PROC_ROOT")]
    pub proc_root: Option<PathBuf>,
    /// Where the host's /sys is.
    #[arg(long, env = "KAPPIE_SYS_ROOT")]
    pub sys_root: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "KAPPIE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Address for the shipper's own /metrics, /-/healthy and /-/ready (`ADDR:PORT`;
    /// port 0 picks a free one, logged as `http_listen`); empty turns them off.
    #[arg(long, env = "KAPPIE_SHIPPER_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Where forward and drop counts come from: `auto` (a Windows build: windows; a Cilium
    /// agent on the node: cilium; else linux), `linux` (eBPF), `cilium` (the Cilium agent's
    /// metrics) or `windows` (HNS/VFP).
    #[arg(long, env = "KAPPIE_DATAPLANE")]
    pub dataplane: Option<Dataplane>,
    /// The Cilium agent's Prometheus metrics endpoint (dataplane cilium, and `auto`'s probe).
    #[arg(long, env = "KAPPIE_CILIUM_METRICS_URL")]
    pub cilium_metrics_url: Option<String>,
}

/// `--dataplane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    #[default]
    Auto,
    Linux,
    Cilium,
    Windows,
}

impl Dataplane {
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Auto => "auto",
            Dataplane::Linux => "linux",
            Dataplane::Cilium => "cilium",
            Dataplane::Windows => "windows",
        }
    }
}

/// The resolved settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub collector: String,
    pub collector_ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub collector_token_file: Option<PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    pub state_file: PathBuf,
    pub node_name: String,
    pub cluster: String,
    pub shipper_id: String,
    pub top_remotes: usize,
    pub queue_max_bytes: usize,
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    pub disable_sources: Vec<String>,
    pub ebpf_interfaces: Vec<String>,
    pub ebpf_required: bool,
    pub ebpf_pin_dir: PathBuf,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub log_format: String,
    /// Empty: off.
    pub http_listen: String,
    pub dataplane: Dataplane,
    pub cilium_metrics_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            collector: "http://127.0.0.1:9095".into(),
            collector_ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            collector_token_file: None,
            interval: Duration::from_secs(10),
            state_file: PathBuf::from("/var/lib/kappie/shipper-state.json"),
            node_name: String::new(),
            cluster: "default".into(),
            shipper_id: String::new(),
            top_remotes: 100,
            queue_max_bytes: 16 << 20,
            max_backoff: Duration::from_secs(30),
            disable_sources: Vec::new(),
            ebpf_interfaces: Vec::new(),
            ebpf_required: false,
            ebpf_pin_dir: PathBuf::from("/sys/fs/bpf/kappie"),
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            log_format: "text".into(),
            http_listen: "127.0.0.1:9965".into(),
            dataplane: Dataplane::Auto,
            cilium_metrics_url: "http://localhost:9962/metrics".into(),
        }
    }
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Config {
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
        if let Some(p) = cli.collector_ca_file {
            c.collector_ca_file = Some(p);
        }
        if let Some(p) = cli.client_cert_file {
            c.client_cert_file = Some(p);
        }
        if let Some(p) = cli.client_key_file {
            c.client_key_file = Some(p);
        }
        if let Some(p) = cli.collector_token_file {
            c.collector_token_file = Some(p);
        }
        take!(
            collector,
            interval,
            state_file,
            node_name,
            cluster,
            shipper_id,
            top_remotes,
            queue_max_bytes,
            max_backoff,
            disable_sources,
            ebpf_interfaces,
            ebpf_required,
            ebpf_pin_dir,
            proc_root,
            sys_root,
            log_format,
            http_listen,
            dataplane,
            cilium_metrics_url
        );
        if c.node_name.is_empty() {
            c.node_name = std::fs::read_to_string(c.proc_root.join("sys/kernel/hostname"))
                .map(|s| s.trim().to_owned())
                .map_err(|e| anyhow::anyhow!("NODE_NAME is not set and the hostname cannot be read: {e}; set --node-name"))?;
        }
        if c.shipper_id.is_empty() {
            c.shipper_id = c.node_name.clone();
        }
        if c.interval.is_zero() {
            anyhow::bail!("--interval must be more than zero");
        }
        if !c.http_listen.is_empty() && c.http_listen.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "--http-listen {:?} is not an ADDR:PORT (such as 127.0.0.1:9965); empty turns it off",
                c.http_listen
            );
        }
        if !c.cilium_metrics_url.starts_with("http://")
            && !c.cilium_metrics_url.starts_with("https://")
        {
            anyhow::bail!(
                "--cilium-metrics-url {:?} is not an http:// or https:// URL",
                c.cilium_metrics_url
            );
        }
        const KNOWN: [&str; 7] = [
            "netstat",
            "sockets",
            "interfaces",
            "ebpf",
            "cilium",
            "self",
            "windows",
        ];
        if let Some(bad) = c
            .disable_sources
            .iter()
            .find(|s| !KNOWN.contains(&s.as_str()))
        {
            anyhow::bail!(
                "unknown source {bad:?} in --disable-sources; known: {}",
                KNOWN.join(", ")
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve(args: &[&str]) -> anyhow::Result<Config> {
        let argv = ["kappie-shipper", "--node-name", "n"].iter().chain(args);
        Config::resolve(Cli::try_parse_from(argv)?)
    }

    #[test]
    fn ebpf_required_is_a_switch_a_value_or_a_file_key() {
        assert!(!resolve(&[]).unwrap().ebpf_required);
        assert!(resolve(&["--ebpf-required"]).unwrap().ebpf_required);
        assert!(
            resolve(&["--ebpf-required", "--interval", "1s"])
                .unwrap()
                .ebpf_required
        );
        assert!(!resolve(&["--ebpf-required=false"]).unwrap().ebpf_required);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shipper.toml");
        std::fs::write(&file, "ebpf_required = true\nhttp_listen = \"\"\n").unwrap();
        let c = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        assert!(c.ebpf_required);
        assert_eq!(
            c.http_listen, "",
            "empty in the file turns the endpoints off"
        );
    }

    #[test]
    fn dataplane_and_cilium_url_from_flag_file_or_default() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.dataplane, Dataplane::Auto);
        assert_eq!(c.cilium_metrics_url, "http://localhost:9962/metrics");
        let c = resolve(&[
            "--dataplane",
            "cilium",
            "--cilium-metrics-url",
            "http://127.0.0.1:1/metrics",
        ])
        .unwrap();
        assert_eq!(c.dataplane, Dataplane::Cilium);
        assert_eq!(c.cilium_metrics_url, "http://127.0.0.1:1/metrics");
        assert!(resolve(&["--dataplane", "calico"]).is_err());
        let e = resolve(&["--cilium-metrics-url", "localhost:9962"]).unwrap_err();
        assert!(e.to_string().contains("not an http"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shipper.toml");
        std::fs::write(&file, "dataplane = \"linux\"\n").unwrap();
        let c = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.dataplane, Dataplane::Linux);
    }

    #[test]
    fn http_listen_defaults_to_loopback_and_must_be_an_address() {
        assert_eq!(resolve(&[]).unwrap().http_listen, "127.0.0.1:9965");
        assert_eq!(
            resolve(&["--http-listen", "0.0.0.0:0"])
                .unwrap()
                .http_listen,
            "0.0.0.0:0"
        );
        let e = resolve(&["--http-listen", "localhost"]).unwrap_err();
        assert!(e.to_string().contains("is not an ADDR:PORT"), "{e}");
    }
}
