//! Windows nodes: HNS endpoint statistics and VFP port counters, summed per node.
//!
//! Each collection reads, through a [`WindowsPlatform`]:
//! - HNS's local endpoints (a pod's vNIC each) and their statistics ([`hns`]);
//! - `vfpctrl /list-vmswitch-port`: every vSwitch port with its MAC address and the
//!   vSwitch's drops by reason, and `vfpctrl /port <name> /get-port-counter` for each port
//!   that belongs to a local endpoint ([`vfp`]). Ports are matched to endpoints by MAC
//!   address, as Retina does; the external port and the host vNIC are left out, since they
//!   carry the pods' packets a second time.
//!
//! | from | metric | labels |
//! |---|---|---|
//! | HNS `PacketsReceived`/`PacketsSent` | `kappie_forward_count` | `direction` ingress/egress |
//! | HNS `BytesReceived`/`BytesSent` | `kappie_forward_bytes` | `direction` |
//! | HNS `DroppedPacketsIncoming`/`Outgoing` | `kappie_drop_count` | `reason="ENDPOINT"`, `direction` |
//! | vSwitch `Ingress`/`Egress packet drops : <reason>` | `kappie_drop_count` | `reason` (`MAC_SPOOFING`, …), `direction` egress/ingress |
//! | VFP `Dropped <reason> packets` | `kappie_drop_count` | `reason` (`ACL`, …), `direction` |
//! | VFP `SYN`/`FIN`/`RST packets` | `kappie_tcp_flag_counters` | `flag`, `direction` |
//! | VFP `TCP …` counters | `kappie_tcp_connection_stats` | `statistic_name` (`InTCPConnectionsVerified`, …) |
//! | HNS, per endpoint | `kappie_interface_stats` | `interface_name` (endpoint name), `statistic_name` (HNS field) |
//!
//! Reasons are the printed names in UPPER_SNAKE ([`upper_snake`]). The drop reasons come
//! from three counters, and whether HNS's per-endpoint drops (`ENDPOINT`) include packets
//! that VFP or the vSwitch also count under a reason is not documented: a sum over reasons
//! may count a packet twice. Not emitted on Windows: `kappie_drop_bytes` (neither HNS nor VFP
//! counts dropped bytes) and `kappie_tcp_state` (no documented HNS or VFP output holds
//! connection states).
//!
//! Node totals are sums of every endpoint's increase ([`totals`], which also describes the
//! overwrite bug of Retina's plugin that it avoids).
//!
//! Everything but `native` (Windows only: running vfpctrl.exe, calling HNS) builds and is
//! tested on every system, with fixtures in `tests/fixtures/windows/` whose README says where
//! each format comes from.

pub mod command;
pub mod hns;
#[cfg(windows)]
pub mod native;
pub mod totals;
pub mod vfp;

use crate::source::{Observation, Source, SourceError};
use hns::EndpointStats;
use std::collections::HashSet;
use totals::NodeTotals;

/// The calls a Windows node answers. Each returns what Windows said, as it said it; the
/// parsing is the source's. Implementations: `native::Native` on Windows, fakes over
/// fixture files in tests. Called from the collection's blocking thread.
pub trait WindowsPlatform: Send {
    /// The output of `vfpctrl /list-vmswitch-port`.
    fn list_ports(&self) -> Result<String, SourceError>;
    /// The output of `vfpctrl /port <port> /get-port-counter` (`port`: a `Port name`).
    fn port_counters(&self, port: &str) -> Result<String, SourceError>;
    /// HNS's local endpoints with their statistics (usually through
    /// [`hns::endpoint_stats_via`]).
    fn endpoint_stats(&self) -> Result<Vec<EndpointStats>, SourceError>;
}

pub use crate::series::upper_snake;

/// A MAC address as HNS (`00-15-5D-5A-B0-A1`) and vfpctrl (dashes, colons or none) may
/// print it, reduced to its lower-case hex digits, so the two can be compared.
pub fn normalize_mac(mac: &str) -> String {
    mac.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The source over any platform.
pub struct WindowsSource<P> {
    platform: P,
    hns: NodeTotals,
    vfp: NodeTotals,
}

impl<P: WindowsPlatform> WindowsSource<P> {
    pub fn new(platform: P) -> Self {
        WindowsSource {
            platform,
            hns: NodeTotals::default(),
            vfp: NodeTotals::default(),
        }
    }

    /// The VFP part of a collection. Its totals take the ports that answered; a port whose
    /// counters could not be read keeps its last values for the next collection, and the
    /// first such error is returned after the rest is done.
    fn collect_vfp(
        &mut self,
        endpoints: &[EndpointStats],
        out: &mut Vec<Observation>,
    ) -> Result<(), SourceError> {
        let ports = vfp::parse_port_list(&self.platform.list_ports()?);
        let macs: HashSet<&str> = endpoints
            .iter()
            .map(|e| e.mac.as_str())
            .filter(|m| !m.is_empty())
            .collect();
        let mut seen = HashSet::new();
        let mut readings = Vec::new();
        let mut first_error = None;
        for port in &ports {
            if !macs.contains(port.mac.as_str()) || !seen.insert(port.name.as_str()) {
                continue;
            }
            readings.extend(vfp::switch_drop_readings(port));
            match self.platform.port_counters(&port.name) {
                Ok(text) => readings.extend(vfp::counter_readings(
                    &port.name,
                    &vfp::parse_port_counters(&text),
                )),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.vfp.add(readings);
        out.extend(self.vfp.observations());
        first_error.map_or(Ok(()), Err)
    }
}

impl<P: WindowsPlatform> Source for WindowsSource<P> {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        let endpoints = self.platform.endpoint_stats()?;
        self.hns.add(hns::readings(&endpoints));
        out.extend(self.hns.observations());
        out.extend(hns::interface_stats(&endpoints));
        self.collect_vfp(&endpoints, out)
    }
}

/// The Windows sources over `platform`.
pub fn windows_sources_with(platform: impl WindowsPlatform + 'static) -> Vec<Box<dyn Source>> {
    vec![Box::new(WindowsSource::new(platform))]
}

/// The Windows sources of this machine, for the agent on Windows builds.
#[cfg(windows)]
pub fn windows_sources() -> Vec<Box<dyn Source>> {
    windows_sources_with(native::Native::default())
}

#[cfg(test)]
mod tests;
