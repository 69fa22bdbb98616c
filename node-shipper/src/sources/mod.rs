//! The Linux utility sources: /proc, sysfs, netlink sock_diag and the ethtool ioctl.

pub mod btf;
pub mod ebpf;
pub mod ethtool;
pub mod interfaces;
pub mod kernelfs;
pub mod netstat;
pub mod selfmetrics;
pub mod sockdiag;
pub mod sockets;

use crate::source::Source;
use std::path::PathBuf;

/// Where the host's /proc and /sys are (inside a container they are often mounted at
/// `/host/proc` and `/host/sys`).
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

/// Every utility source, in a fixed order.
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
