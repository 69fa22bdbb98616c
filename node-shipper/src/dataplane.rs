//! Which dataplane the node has, and so where forward and drop counts come from
//! (`--dataplane`): on `linux` Kappie's own eBPF programs, on `cilium` the Cilium agent's
//! metrics (Cilium's programs forward and drop the packets), on `windows` HNS/VFP.
//!
//! `auto` picks windows on a Windows build; else cilium when a Cilium agent is on the node —
//! its maps are pinned under the bpffs (`<bpffs root>/tc/globals/cilium_*`, where every
//! Cilium release pins them) or its metrics endpoint answers with `cilium_` metrics; else
//! linux. The bpffs root is the parent of `--ebpf-pin-dir` (`/sys/fs/bpf` by default).

use crate::config::{Config, Dataplane};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `auto` waits for the agent's metrics endpoint.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The dataplane chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Never `Auto`.
    pub dataplane: Dataplane,
    /// `configured`, `windows_build`, `cilium_bpf_maps`, `cilium_metrics_endpoint` or
    /// `no_cilium_agent` (the `reason` label of `kappie_shipper_dataplane`).
    pub reason: &'static str,
    /// The same for a person, for the log.
    pub detail: String,
}

/// The bpffs mount the shipper pins in, and where Cilium pins too.
pub fn bpffs_root(config: &Config) -> PathBuf {
    config
        .ebpf_pin_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"))
}

/// Cilium's maps pinned under `bpffs_root` (`tc/globals/cilium_*`), sorted.
pub fn cilium_maps(bpffs_root: &Path) -> Vec<PathBuf> {
    let mut maps: Vec<PathBuf> = std::fs::read_dir(bpffs_root.join("tc/globals"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("cilium_"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    maps.sort();
    maps
}

/// Whether `url` answers with a Cilium agent's metrics (blocking, at most
/// [`PROBE_TIMEOUT`]); why not otherwise.
pub fn cilium_endpoint_answers(url: &str) -> Result<(), String> {
    let body = ureq::AgentBuilder::new()
        .timeout(PROBE_TIMEOUT)
        .build()
        .get(url)
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())?;
    match body.lines().any(|l| l.starts_with("cilium_")) {
        true => Ok(()),
        false => Err("it answered, but with no cilium_ metrics".into()),
    }
}

/// Resolves `--dataplane` (probing the node for `auto`; blocking). `windows` on a build for
/// another OS is an error.
pub fn choose(config: &Config) -> anyhow::Result<Choice> {
    let configured = |dataplane, detail: &str| Choice {
        dataplane,
        reason: "configured",
        detail: detail.to_owned(),
    };
    match config.dataplane {
        Dataplane::Linux => return Ok(configured(Dataplane::Linux, "--dataplane linux")),
        Dataplane::Cilium => return Ok(configured(Dataplane::Cilium, "--dataplane cilium")),
        Dataplane::Windows if cfg!(windows) => {
            return Ok(configured(Dataplane::Windows, "--dataplane windows"))
        }
        Dataplane::Windows => anyhow::bail!(
            "--dataplane windows needs the Windows build of kappie-shipper (this one is for {}); \
             use --dataplane auto, linux or cilium here",
            std::env::consts::OS
        ),
        Dataplane::Auto => {}
    }
    if cfg!(windows) {
        return Ok(Choice {
            dataplane: Dataplane::Windows,
            reason: "windows_build",
            detail: "a Windows build".into(),
        });
    }
    let root = bpffs_root(config);
    let maps = cilium_maps(&root);
    if let Some(first) = maps.first() {
        return Ok(Choice {
            dataplane: Dataplane::Cilium,
            reason: "cilium_bpf_maps",
            detail: format!(
                "{} Cilium maps pinned, such as {}",
                maps.len(),
                first.display()
            ),
        });
    }
    match cilium_endpoint_answers(&config.cilium_metrics_url) {
        Ok(()) => Ok(Choice {
            dataplane: Dataplane::Cilium,
            reason: "cilium_metrics_endpoint",
            detail: format!("a Cilium agent answers at {}", config.cilium_metrics_url),
        }),
        Err(why) => Ok(Choice {
            dataplane: Dataplane::Linux,
            reason: "no_cilium_agent",
            detail: format!(
                "no Cilium maps under {} and no Cilium agent at {} ({why})",
                root.join("tc/globals").display(),
                config.cilium_metrics_url
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pin_dir: &Path, url: &str, dataplane: Dataplane) -> Config {
        Config {
            ebpf_pin_dir: pin_dir.join("kappie"),
            cilium_metrics_url: url.into(),
            dataplane,
            ..Config::default()
        }
    }

    /// A port nobody listens on (bound, then closed).
    fn refused_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/metrics")
    }

    #[test]
    fn auto_finds_cilium_by_its_pinned_maps() {
        let dir = tempfile::tempdir().unwrap();
        let url = refused_url();
        let c = choose(&config(dir.path(), &url, Dataplane::Auto)).unwrap();
        assert_eq!(
            (c.dataplane, c.reason),
            (Dataplane::Linux, "no_cilium_agent")
        );
        std::fs::create_dir_all(dir.path().join("tc/globals")).unwrap();
        std::fs::write(dir.path().join("tc/globals/kappie_other"), "").unwrap();
        let c = choose(&config(dir.path(), &url, Dataplane::Auto)).unwrap();
        assert_eq!(c.dataplane, Dataplane::Linux, "only cilium_* maps count");
        std::fs::write(dir.path().join("tc/globals/cilium_metrics"), "").unwrap();
        let c = choose(&config(dir.path(), &url, Dataplane::Auto)).unwrap();
        assert_eq!(
            (c.dataplane, c.reason),
            (Dataplane::Cilium, "cilium_bpf_maps")
        );
    }

    #[test]
    fn configured_dataplanes_are_taken_as_they_are_and_windows_needs_its_build() {
        let dir = tempfile::tempdir().unwrap();
        let url = refused_url();
        let c = choose(&config(dir.path(), &url, Dataplane::Cilium)).unwrap();
        assert_eq!((c.dataplane, c.reason), (Dataplane::Cilium, "configured"));
        let c = choose(&config(dir.path(), &url, Dataplane::Linux)).unwrap();
        assert_eq!((c.dataplane, c.reason), (Dataplane::Linux, "configured"));
        if !cfg!(windows) {
            let e = choose(&config(dir.path(), &url, Dataplane::Windows)).unwrap_err();
            assert!(e.to_string().contains("needs the Windows build"), "{e}");
        }
    }

    #[test]
    fn the_bpffs_root_is_the_pin_dirs_parent() {
        let c = Config::default();
        assert_eq!(bpffs_root(&c), PathBuf::from("/sys/fs/bpf"));
        let c = Config {
            ebpf_pin_dir: PathBuf::from("kappie"),
            ..Config::default()
        };
        assert_eq!(bpffs_root(&c), PathBuf::from("/sys/fs/bpf"));
    }
}
