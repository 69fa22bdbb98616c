//! Parsers of `vfpctrl`'s text output (the layouts are described, with where each fact comes
//! from, in `tests/fixtures/windows/README.md`), and the readings Kappie takes from them.
//!
//! Both outputs are lines of `name : value` (CRLF on Windows), grouped by blank lines or by
//! direction headers. Names are compared with whitespace removed and case ignored, as
//! Retina's parser and Microsoft's SdnDiagnostics do, so that a change of spacing between
//! Windows builds does not lose a counter; label values keep the words as printed.

use super::totals::{Reading, SeriesId};
use super::{normalize_mac, upper_snake};

/// One vSwitch port from `vfpctrl /list-vmswitch-port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfpPort {
    /// `Port name`: the GUID that `vfpctrl /port <name>` takes.
    pub name: String,
    /// `Port Friendly name`: `ExternalPort`, `Container NIC …` (the host vNIC) or, for a
    /// container's port, a GUID.
    pub friendly_name: String,
    /// `MAC address`, as [`normalize_mac`] spells it.
    pub mac: String,
    /// The vSwitch's drops of packets from this port, by reason (`Ingress packet drops :
    /// <reason> : <count>`): the reason as printed, and the count.
    pub ingress_drops: Vec<(String, u64)>,
    /// The vSwitch's drops of packets to this port, by reason (`Egress packet drops : …`).
    pub egress_drops: Vec<(String, u64)>,
}

/// Lower-case with every whitespace character removed: how names are compared.
fn squash(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Reads `vfpctrl /list-vmswitch-port`. A port starts at its `Port name` line; lines that
/// are not `name : value` (`ITEM LIST`, `Port is Initialized.`, the closing `Command
/// list-vmswitch-port succeeded!`) are skipped, as are names Kappie does not use.
pub fn parse_port_list(text: &str) -> Vec<VfpPort> {
    let mut ports = Vec::new();
    let mut current: Option<VfpPort> = None;
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = squash(name);
        if name == "portname" {
            ports.extend(current.take());
            current = Some(VfpPort {
                name: rest.trim().to_owned(),
                ..VfpPort::default()
            });
            continue;
        }
        let Some(p) = current.as_mut() else {
            continue;
        };
        match name.as_str() {
            "portfriendlyname" => p.friendly_name = rest.trim().to_owned(),
            "macaddress" => p.mac = normalize_mac(rest),
            // `Ingress packet drops : <reason> : <count>`; the port's total, `Ingress Packet
            // Drops : <count>`, has no reason and is left out.
            "ingresspacketdrops" | "egresspacketdrops" => {
                let Some((reason, count)) = rest.rsplit_once(':') else {
                    continue;
                };
                let Ok(count) = count.trim().parse::<u64>() else {
                    continue;
                };
                let reason = (reason.trim().to_owned(), count);
                if name.starts_with("ingress") {
                    p.ingress_drops.push(reason);
                } else {
                    p.egress_drops.push(reason);
                }
            }
            _ => {}
        }
    }
    ports.extend(current);
    ports
}

/// A VFP direction: `OUT` is what the port's NIC sends (the pod's egress), `IN` what it
/// receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Out => "egress",
            Direction::In => "ingress",
        }
    }

    /// Prefix of a `kappie_tcp_connection_stats` statistic name, after /proc's `InSegs`,
    /// `OutRsts`.
    fn prefix(self) -> &'static str {
        match self {
            Direction::Out => "Out",
            Direction::In => "In",
        }
    }
}

/// One counter of `vfpctrl /port <name> /get-port-counter`: its direction, its name as
/// printed (whitespace runs made single spaces) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCounter {
    pub direction: Direction,
    pub name: String,
    pub value: u64,
}

/// Reads `vfpctrl /port <name> /get-port-counter`: the OUT counters come first (under a
/// `Direction - OUT` header), then `Direction - IN` and the IN counters. Lines whose value
/// is not an integer are skipped.
pub fn parse_port_counters(text: &str) -> Vec<PortCounter> {
    let mut direction = Direction::Out;
    let mut out = Vec::new();
    for line in text.lines() {
        let squashed = squash(line);
        if squashed.starts_with("direction-in") {
            direction = Direction::In;
            continue;
        }
        if squashed.starts_with("direction-out") {
            direction = Direction::Out;
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        out.push(PortCounter {
            direction,
            name: name.split_whitespace().collect::<Vec<_>>().join(" "),
            value,
        });
    }
    out
}

/// What one port counter becomes, if anything:
/// - `Dropped <reason> packets` → `kappie_drop_count{reason, direction}` (a bare `Dropped
///   packets` would be the total of the reasons and is left out);
/// - `SYN packets`, `FIN packets`, `RST packets` → `kappie_tcp_flag_counters{flag,
///   direction}`. `SYN-ACK packets` is left out: Kappie's flags have no SYN-ACK, and adding
///   it to SYN would count SYN-ACKs twice if VFP's SYN count already includes them, which
///   nothing documents either way;
/// - any other name starting with `TCP` (`TCP Connections Verified`, `TCP Half Open
///   Timeouts`, …) → `kappie_tcp_connection_stats{statistic_name}`, the name without spaces
///   after `In`/`Out` (`InTCPConnectionsVerified`): the metric has no direction label, and
///   whether VFP counts one connection in both directions is not documented, so the two are
///   kept apart rather than summed.
pub fn counter_series(c: &PortCounter) -> Option<SeriesId> {
    let words: Vec<&str> = c.name.split(' ').collect();
    let direction = c.direction.label();
    if words.len() > 2
        && words[0].eq_ignore_ascii_case("dropped")
        && words[words.len() - 1].eq_ignore_ascii_case("packets")
    {
        let reason = upper_snake(&words[1..words.len() - 1].join(" "));
        return (!reason.is_empty()).then(|| {
            SeriesId::new(
                "kappie_drop_count",
                vec![("reason", reason), ("direction", direction.into())],
            )
        });
    }
    let flag = match squash(&c.name).as_str() {
        "synpackets" => Some("SYN"),
        "finpackets" => Some("FIN"),
        "rstpackets" => Some("RST"),
        _ => None,
    };
    if let Some(flag) = flag {
        return Some(SeriesId::new(
            "kappie_tcp_flag_counters",
            vec![("flag", flag.into()), ("direction", direction.into())],
        ));
    }
    let bare: String = c.name.split(' ').collect();
    // `get`: a name need not be ASCII, and byte 3 need not end a character (a fuzz find).
    if bare.len() > 3 && bare.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("tcp")) {
        return Some(SeriesId::new(
            "kappie_tcp_connection_stats",
            vec![("statistic_name", format!("{}{bare}", c.direction.prefix()))],
        ));
    }
    None
}

/// The readings of one port's counters, for the node totals.
pub fn counter_readings(port: &str, counters: &[PortCounter]) -> Vec<Reading> {
    counters
        .iter()
        .filter_map(|c| {
            counter_series(c).map(|series| Reading {
                entity: port.to_owned(),
                series,
                value: c.value,
            })
        })
        .collect()
}

/// The readings of the vSwitch's drops by reason on one port. The vSwitch's ingress is the
/// path of packets from their source port (the Hyper-V extensible switch's terms: see the
/// README), so on a pod's port its ingress drops are the pod's egress.
pub fn switch_drop_readings(port: &VfpPort) -> Vec<Reading> {
    let sides = [
        (&port.ingress_drops, "egress"),
        (&port.egress_drops, "ingress"),
    ];
    let mut out = Vec::new();
    for (drops, direction) in sides {
        for (reason, count) in drops {
            let reason = upper_snake(reason);
            if reason.is_empty() {
                continue;
            }
            out.push(Reading {
                entity: port.name.clone(),
                series: SeriesId::new(
                    "kappie_drop_count",
                    vec![("reason", reason), ("direction", direction.into())],
                ),
                value: *count,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    const PORT_A: &str = "6F2A1C3E-8B4D-4E2A-9C11-0A1B2C3D4E5A";

    #[test]
    fn port_list_reads_every_port_with_its_mac_and_drop_reasons() {
        let ports = parse_port_list(&fixture(
            "windows/collection1/vfpctrl_list_vmswitch_port.txt",
        ));
        let names: Vec<&str> = ports.iter().map(|p| p.friendly_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ExternalPort",
                "Container NIC 8453379c",
                PORT_A,
                "6F2A1C3E-8B4D-4E2A-9C11-0A1B2C3D4E5B",
                "6F2A1C3E-8B4D-4E2A-9C11-0A1B2C3D4E5C",
            ]
        );
        let a = &ports[2];
        assert_eq!(a.name, PORT_A);
        assert_eq!(a.mac, "00155d5ab0a1");
        assert_eq!(a.ingress_drops, [("Mac Spoofing".to_owned(), 2)]);
        assert_eq!(a.egress_drops, [("Failed Security Policy".to_owned(), 4)]);
        assert_eq!(ports[0].ingress_drops, [("Filtered VLAN".to_owned(), 9)]);
    }

    #[test]
    fn port_counters_are_out_first_then_in() {
        let counters = parse_port_counters(&fixture(&format!(
            "windows/collection1/vfpctrl_port_counter/{PORT_A}.txt"
        )));
        let find = |d: Direction, name: &str| {
            counters
                .iter()
                .find(|c| c.direction == d && c.name == name)
                .map(|c| c.value)
        };
        assert_eq!(find(Direction::Out, "Dropped ACL packets"), Some(4));
        assert_eq!(find(Direction::In, "Dropped ACL packets"), Some(2));
        assert_eq!(find(Direction::Out, "SYN packets"), Some(10));
        assert_eq!(find(Direction::In, "SYN-ACK packets"), Some(10));
        assert_eq!(
            find(Direction::In, "TCP Connections Expired to Time Wait"),
            Some(6)
        );
        // Each name appears once per direction.
        let outs = counters.iter().filter(|c| c.direction == Direction::Out);
        let ins = counters.iter().filter(|c| c.direction == Direction::In);
        assert_eq!(outs.count(), ins.count());
    }

    #[test]
    fn counters_map_to_kappie_series() {
        let c = |direction, name: &str| PortCounter {
            direction,
            name: name.into(),
            value: 1,
        };
        let series = |d, n: &str| counter_series(&c(d, n)).map(|s| (s.metric, s.labels));
        assert_eq!(
            series(Direction::In, "Dropped ACL packets"),
            Some((
                "kappie_drop_count",
                vec![
                    ("direction", "ingress".to_owned()),
                    ("reason", "ACL".to_owned())
                ]
            ))
        );
        assert_eq!(
            series(Direction::Out, "Dropped MAC spoofing packets").map(|s| s.1),
            Some(vec![
                ("direction", "egress".to_owned()),
                ("reason", "MAC_SPOOFING".to_owned())
            ])
        );
        assert_eq!(series(Direction::Out, "Dropped packets"), None);
        assert_eq!(
            series(Direction::Out, "RST packets"),
            Some((
                "kappie_tcp_flag_counters",
                vec![
                    ("direction", "egress".to_owned()),
                    ("flag", "RST".to_owned())
                ]
            ))
        );
        assert_eq!(series(Direction::In, "SYN-ACK packets"), None);
        assert_eq!(
            series(Direction::In, "TCP Connections Reset by SYN"),
            Some((
                "kappie_tcp_connection_stats",
                vec![("statistic_name", "InTCPConnectionsResetbySYN".to_owned())]
            ))
        );
        assert_eq!(series(Direction::In, "Bytes"), None);
    }

    #[test]
    fn switch_drops_on_a_pods_port_are_seen_from_the_pod() {
        let port = VfpPort {
            name: "P".into(),
            ingress_drops: vec![("Mac Spoofing".into(), 2)],
            egress_drops: vec![("Failed Security Policy".into(), 4)],
            ..VfpPort::default()
        };
        let r: Vec<(Vec<(&str, String)>, u64)> = switch_drop_readings(&port)
            .into_iter()
            .map(|r| (r.series.labels, r.value))
            .collect();
        assert_eq!(
            r,
            [
                (
                    vec![
                        ("direction", "egress".to_owned()),
                        ("reason", "MAC_SPOOFING".to_owned())
                    ],
                    2
                ),
                (
                    vec![
                        ("direction", "ingress".to_owned()),
                        ("reason", "FAILED_SECURITY_POLICY".to_owned())
                    ],
                    4
                ),
            ]
        );
    }
}
