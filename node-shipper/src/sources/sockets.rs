//! `kappie_tcp_state`, `kappie_tcp_connection_remote` and `kappie_udp_active_sockets` from
//! the socket tables of the shipper's network namespace (the node's, under `hostNetwork`).
//!
//! Two readers give the same sockets (the live tests hold both to `ss`):
//! - netlink sock_diag ([`super::sockdiag`]), the default: binary records, for about a third
//!   of the CPU time of the text tables at 10,000 sockets and under a tenth at 100, nearly
//!   all of it now the kernel's (docs/BENCHMARKS.md). Its socket is opened by
//!   [`SocketsSource::new`] in the network namespace of the calling thread; `--proc-root`
//!   does not move it.
//! - /proc/net/{tcp,tcp6,udp,udp6} under the proc root, the fallback where the kernel
//!   refuses sock_diag (a sandbox's EPERM, a kernel without `inet_diag`). Under the host's
//!   /proc mounted elsewhere (`--proc-root /host/proc`) these are still the tables of the
//!   reading process's namespace: `net` is a link to `self/net`.
//!
//! The first collection settles which one is used and logs it once.

use super::sockdiag::{SockDiag, ALL_STATES};
use crate::source::{read, Observation, Source, SourceError};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// TCP states by the kernel's number (`include/net/tcp_states.h`), as SPEC §1 names them.
/// 12 (`TCP_NEW_SYN_RECV`, a request socket) is reported as `SYN_RECV`, as `ss` does.
pub const TCP_STATES: [&str; 11] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// Name of a kernel TCP state number.
pub fn tcp_state_name(st: u8) -> Option<&'static str> {
    match st {
        1..=11 => Some(TCP_STATES[st as usize - 1]),
        12 => Some("SYN_RECV"),
        _ => None,
    }
}

/// One socket: a line of /proc/net/tcp{,6} or udp{,6}, or a sock_diag record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
}

/// Parses a /proc/net/{tcp,tcp6,udp,udp6} table.
pub fn parse_socket_table(text: &str) -> Result<Vec<SocketEntry>, String> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let (_sl, local, remote, state) = match (f.next(), f.next(), f.next(), f.next()) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => return Err(format!("short line {line:?}")),
        };
        out.push(SocketEntry {
            local: parse_hex_addr(local)?,
            remote: parse_hex_addr(remote)?,
            state: u8::from_str_radix(state, 16).map_err(|_| format!("bad state {state:?}"))?,
        });
    }
    Ok(out)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6). The address is printed as 32-bit
/// words in the kernel's native byte order; the port is already in host order.
fn parse_hex_addr(s: &str) -> Result<SocketAddr, String> {
    let (a, p) = s
        .split_once(':')
        .ok_or_else(|| format!("bad address {s:?}"))?;
    let port = u16::from_str_radix(p, 16).map_err(|_| format!("bad port in {s:?}"))?;
    let word = |i: usize| -> Result<[u8; 4], String> {
        let w = a
            .get(i * 8..i * 8 + 8)
            .ok_or_else(|| format!("bad address {s:?}"))?;
        Ok(u32::from_str_radix(w, 16)
            .map_err(|_| format!("bad address {s:?}"))?
            .to_ne_bytes())
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return Err(format!("bad address {s:?}")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Per state, the number of sockets (every state present, zeros included).
pub fn count_states(entries: &[SocketEntry]) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = TCP_STATES.iter().map(|s| (*s, 0)).collect();
    for e in entries {
        if let Some(name) = tcp_state_name(e.state) {
            if let Some(c) = counts.iter_mut().find(|(n, _)| *n == name) {
                c.1 += 1;
            }
        }
    }
    counts
}

/// Sockets per remote address and port: the `top` remotes by count (ties by address, then
/// port) and the sum of the rest. Loopback and unspecified remotes are left out.
pub fn top_remotes(entries: &[SocketEntry], top: usize) -> (Vec<(SocketAddr, usize)>, usize) {
    let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
    for e in entries {
        let ip = e.remote.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        *counts.entry(e.remote).or_default() += 1;
    }
    let mut v: Vec<(SocketAddr, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let other = v.iter().skip(top).map(|(_, c)| c).sum();
    v.truncate(top);
    (v, other)
}

/// The source.
pub struct SocketsSource {
    proc_root: PathBuf,
    top: usize,
    reader: Reader,
    /// Whether the reader in use has been logged.
    announced: bool,
    /// This collection's TCP sockets (kept to reuse the allocation).
    tcp: Vec<SocketEntry>,
}

enum Reader {
    Netlink {
        diag: SockDiag,
        /// Whether a failed dump moves the source to /proc: only until netlink has worked
        /// once. After that a failure is the collection's error, logged and counted by the
        /// agent, and the next collection tries netlink again.
        may_fall_back: bool,
    },
    /// /proc/net; `why` netlink is not used, logged at the first collection (a warning
    /// when the kernel `refused` it: the fallback costs more CPU).
    Proc { why: String, refused: bool },
}

impl SocketsSource {
    /// Netlink sock_diag, opened here in the calling thread's network namespace, or
    /// /proc/net under `proc_root` where netlink is refused.
    pub fn new(proc_root: PathBuf, top: usize) -> Self {
        let reader = match SockDiag::open() {
            Ok(diag) => Reader::Netlink {
                diag,
                may_fall_back: true,
            },
            Err(err) => Reader::Proc {
                why: format!("cannot open a NETLINK_SOCK_DIAG socket: {err}"),
                refused: true,
            },
        };
        Self::with_reader(proc_root, top, reader)
    }

    /// /proc/net/{tcp,tcp6,udp,udp6} under `proc_root` only (the fallback, for tests and
    /// benchmarks).
    pub fn proc_only(proc_root: PathBuf, top: usize) -> Self {
        let why = "the /proc reader was asked for".to_owned();
        let reader = Reader::Proc {
            why,
            refused: false,
        };
        Self::with_reader(proc_root, top, reader)
    }

    /// Netlink sock_diag only, in the calling thread's network namespace: a refused dump
    /// is the collection's error (for tests and benchmarks).
    pub fn netlink_only(top: usize) -> io::Result<Self> {
        let reader = Reader::Netlink {
            diag: SockDiag::open()?,
            may_fall_back: false,
        };
        Ok(Self::with_reader(PathBuf::new(), top, reader))
    }

    fn with_reader(proc_root: PathBuf, top: usize, reader: Reader) -> Self {
        SocketsSource {
            proc_root,
            top,
            reader,
            announced: false,
            tcp: Vec::new(),
        }
    }

    /// Whether the source reads netlink sock_diag (else /proc/net). Settled by the first
    /// collection.
    pub fn uses_netlink(&self) -> bool {
        matches!(self.reader, Reader::Netlink { .. })
    }

    /// Fills `self.tcp` with the TCP sockets of both families; returns the number of UDP
    /// sockets.
    fn read_tables(&mut self) -> Result<usize, SourceError> {
        if let Reader::Netlink {
            diag,
            may_fall_back,
        } = &mut self.reader
        {
            match read_netlink(diag, &mut self.tcp) {
                Ok(udp) => {
                    *may_fall_back = false;
                    if !self.announced {
                        self.announced = true;
                        tracing::info!(
                            source = "sockets",
                            "reading sockets over netlink sock_diag"
                        );
                    }
                    return Ok(udp);
                }
                Err(err) if *may_fall_back => {
                    self.reader = Reader::Proc {
                        why: format!("the kernel refused a sock_diag dump: {err}"),
                        refused: true,
                    };
                }
                Err(err) => {
                    return Err(SourceError::Ioctl {
                        what: "netlink sock_diag dump".to_owned(),
                        err,
                    })
                }
            }
        }
        if let (false, Reader::Proc { why, refused }) = (self.announced, &self.reader) {
            self.announced = true;
            let path = self.proc_root.join("net");
            let path = path.display();
            const MSG: &str = "reading sockets from /proc/net/{tcp,tcp6,udp,udp6}";
            if *refused {
                tracing::warn!(source = "sockets", reason = %why, path = %path, "{MSG}");
            } else {
                tracing::info!(source = "sockets", reason = %why, path = %path, "{MSG}");
            }
        }
        self.tcp = self.table("tcp")?;
        self.tcp.extend(self.table("tcp6")?);
        Ok(self.table("udp")?.len() + self.table("udp6")?.len())
    }

    fn table(&self, name: &str) -> Result<Vec<SocketEntry>, SourceError> {
        let path = self.proc_root.join("net").join(name);
        match std::fs::metadata(&path) {
            // No IPv6 in this kernel: no tcp6/udp6.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.ends_with('6') => {
                return Ok(Vec::new())
            }
            _ => {}
        }
        let text = read(path.clone())?;
        parse_socket_table(&text).map_err(|msg| SourceError::Parse { path, msg })
    }
}

/// The TCP sockets of both families into `tcp`; returns the number of UDP sockets. Four
/// dumps, as `ss -ta` and `ss -ua` make them: a dump is for one family.
fn read_netlink(diag: &mut SockDiag, tcp: &mut Vec<SocketEntry>) -> io::Result<usize> {
    const FAMILIES: [u8; 2] = [libc::AF_INET as u8, libc::AF_INET6 as u8];
    tcp.clear();
    for family in FAMILIES {
        diag.dump(family, libc::IPPROTO_TCP as u8, ALL_STATES, |s| {
            tcp.push(SocketEntry {
                local: s.local,
                remote: s.remote,
                state: s.state,
            })
        })?;
    }
    let mut udp = 0;
    for family in FAMILIES {
        diag.dump(family, libc::IPPROTO_UDP as u8, ALL_STATES, |_| udp += 1)?;
    }
    Ok(udp)
}

impl Source for SocketsSource {
    fn name(&self) -> &'static str {
        "sockets"
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        let udp = self.read_tables()?;
        let tcp = &self.tcp;
        for (state, n) in count_states(tcp) {
            out.push(Observation::gauge(
                "kappie_tcp_state",
                vec![("state", state.to_owned())],
                n as f64,
            ));
        }
        let (top, other) = top_remotes(tcp, self.top);
        for (addr, n) in top {
            out.push(Observation::gauge(
                "kappie_tcp_connection_remote",
                vec![
                    ("address", addr.ip().to_string()),
                    ("port", addr.port().to_string()),
                ],
                n as f64,
            ));
        }
        out.push(Observation::gauge(
            "kappie_tcp_connection_remote",
            vec![("address", "other".to_owned())],
            other as f64,
        ));
        out.push(Observation::gauge(
            "kappie_udp_active_sockets",
            vec![],
            udp as f64,
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    #[test]
    fn parses_captured_tables() {
        let v4 = parse_socket_table(&fixture("proc_net_tcp")).unwrap();
        let v6 = parse_socket_table(&fixture("proc_net_tcp6")).unwrap();
        assert!(v4
            .iter()
            .any(|e| e.local.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) && e.state == 10));
        assert!(v6
            .iter()
            .any(|e| e.local.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST) && e.state == 10));
        // The v4-mapped connection on a dual-stack socket reads as IPv4.
        assert!(v6
            .iter()
            .any(|e| e.state == 1 && e.remote.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let udp = parse_socket_table(&fixture("proc_net_udp")).unwrap();
        let udp6 = parse_socket_table(&fixture("proc_net_udp6")).unwrap();
        assert_eq!(
            udp.len() + udp6.len(),
            fixture("proc_net_udp").lines().count() + fixture("proc_net_udp6").lines().count() - 2
        );
    }

    #[test]
    fn captured_remotes_fixture_has_the_namespace_peers() {
        // Captured in a namespace with a veth peer 198.18.0.2 / 2001:db8::2 (see
        // tests/fixtures/README.md): 3 connections to :8080 and 1 to :8081 on each family.
        let mut t = parse_socket_table(&fixture("netns_tcp")).unwrap();
        t.extend(parse_socket_table(&fixture("netns_tcp6")).unwrap());
        let (top, other) = top_remotes(&t, 2);
        let a4: SocketAddr = "198.18.0.2:8080".parse().unwrap();
        let a6: SocketAddr = "[2001:db8::2]:8080".parse().unwrap();
        assert_eq!(top, vec![(a4, 3), (a6, 3)]);
        assert_eq!(other, 2);
        let states = count_states(&t);
        assert_eq!(states.iter().find(|s| s.0 == "ESTABLISHED").unwrap().1, 8);
    }

    #[test]
    fn states_remotes_and_exclusions() {
        let e = |l: &str, r: &str, st: u8| SocketEntry {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
            state: st,
        };
        let t = vec![
            e("10.0.0.1:1", "0.0.0.0:0", 10),
            e("10.0.0.1:2", "127.0.0.1:80", 1),
            e("[::1]:2", "[::1]:80", 1),
            e("10.0.0.1:3", "10.0.0.9:443", 1),
            e("10.0.0.1:4", "10.0.0.9:443", 6),
            e("10.0.0.1:5", "10.0.0.8:53", 12),
            e("10.0.0.1:6", "10.0.0.7:53", 2),
        ];
        let (top, other) = top_remotes(&t, 1);
        assert_eq!(top, vec![("10.0.0.9:443".parse().unwrap(), 2)]);
        assert_eq!(other, 2);
        let s = count_states(&t);
        assert_eq!(s.len(), 11);
        let get = |n: &str| s.iter().find(|x| x.0 == n).unwrap().1;
        assert_eq!(
            (
                get("ESTABLISHED"),
                get("LISTEN"),
                get("SYN_RECV"),
                get("TIME_WAIT"),
                get("SYN_SENT")
            ),
            (3, 1, 1, 1, 1)
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse_socket_table("hdr\n 0: 0100007F:0050\n").is_err());
        assert!(parse_socket_table("hdr\n 0: 0100007F:0050 zz:0 01\n").is_err());
        assert!(parse_socket_table("hdr\n 0: 0100007F:0050 00000000:0000 xx\n").is_err());
    }
}
