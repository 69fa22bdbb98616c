//! The data sources: on Linux the utility sources (/proc, sysfs, netlink sock_diag and the
//! ethtool ioctl) and the dataplane sources the agent starts for the chosen dataplane
//! (`ebpf`, `cilium`); on Windows HNS and VFP ([`windows`], whose parsing and summing build and are tested
//! everywhere); and the shipper's own metrics everywhere.

#[cfg(target_os = "linux")]
pub mod btf;
#[cfg(target_os = "linux")]
pub mod cilium;
#[cfg(target_os = "linux")]
pub mod ebpf;
/// Where there is no eBPF (not Linux): no programs, so telemetry's eBPF families are empty.
#[cfg(not(target_os = "linux"))]
#[path = "ebpf/absent.rs"]
pub mod ebpf;
#[cfg(target_os = "linux")]
pub mod ethtool;
#[cfg(target_os = "linux")]
pub mod interfaces;
#[cfg(target_os = "linux")]
pub mod kernelfs;
#[cfg(target_os = "linux")]
pub mod netstat;
pub mod selfmetrics;
#[cfg(target_os = "linux")]
pub mod sockdiag;
#[cfg(target_os = "linux")]
pub mod sockets;
pub mod windows;

#[cfg(target_os = "linux")]
use crate::source::Source;
#[cfg(target_os = "linux")]
use std::path::PathBuf;

/// Where the host's /proc and /sys are (inside a container they are often mounted at
/// `/host/proc` and `/host/sys`).
#[cfg(target_os = "linux")]
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

/// Every utility source, in a fixed order.
#[cfg(target_os = "linux")]
pub fn utility_sources(roots: &Roots, top_remotes: usize) -> Vec<Box<dyn Source>> {
    vec![
        Box::new(netstat::NetstatSource::new(roots.proc.clone())),
        Box::new(sockets::SocketsSource::new(roots.proc.clone(), top_remotes)),
        Box::new(interfaces::InterfacesSource::new(roots.sys.clone())),
    ]
}

/// A fixture file captured from a real machine (`tests/fixtures/`), for the parsers' tests.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
