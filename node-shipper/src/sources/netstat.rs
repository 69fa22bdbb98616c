//! `kappie_tcp_connection_stats`, `kappie_ip_connection_stats` and
//! `kappie_udp_connection_stats` from /proc/net/netstat, /proc/net/snmp and
//! /proc/net/snmp6.

use crate::source::{read, Observation, Source, SourceError};
use std::path::PathBuf;

/// Fields of those tables that are not counters (settings and current values). They are
/// left out because a counter that goes down would read as a reset.
const NOT_COUNTERS: &[(&str, &str)] = &[
    ("Tcp", "RtoAlgorithm"),
    ("Tcp", "RtoMin"),
    ("Tcp", "RtoMax"),
    ("Tcp", "MaxConn"),
    ("Tcp", "CurrEstab"),
    ("Ip", "Forwarding"),
    ("Ip", "DefaultTTL"),
];

/// One counter of a /proc/net/netstat or /proc/net/snmp table.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStat {
    /// The table: `Tcp`, `TcpExt`, `Ip`, `IpExt`, `Udp`, …
    pub table: String,
    pub name: String,
    pub value: f64,
}

/// Parses the two-line-per-table format of /proc/net/netstat and /proc/net/snmp
/// (`Table: Name1 Name2 …` followed by `Table: v1 v2 …`).
pub fn parse_netstat(text: &str) -> Result<Vec<ProcStat>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(header) = lines.next() {
        let values = lines
            .next()
            .ok_or_else(|| format!("header line {header:?} has no value line"))?;
        let (table, names) = header
            .split_once(':')
            .ok_or_else(|| format!("line {header:?} has no table name"))?;
        let (vtable, vals) = values
            .split_once(':')
            .ok_or_else(|| format!("line {values:?} has no table name"))?;
        if table != vtable {
            return Err(format!(
                "value line for {vtable:?} follows header of {table:?}"
            ));
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let vals: Vec<&str> = vals.split_whitespace().collect();
        if names.len() != vals.len() {
            return Err(format!(
                "{table}: {} names but {} values",
                names.len(),
                vals.len()
            ));
        }
        for (n, v) in names.iter().zip(vals) {
            let value: f64 = v
                .parse::<i64>()
                .map(|x| x as f64)
                .or_else(|_| v.parse::<u64>().map(|x| x as f64))
                .map_err(|_| format!("{table} {n}: value {v:?} is not an integer"))?;
            out.push(ProcStat {
                table: table.to_owned(),
                name: (*n).to_owned(),
                value,
            });
        }
    }
    Ok(out)
}

/// Parses /proc/net/snmp6 (`Name value` per line).
pub fn parse_snmp6(text: &str) -> Result<Vec<(String, f64)>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let (Some(n), Some(v), None) = (it.next(), it.next(), it.next()) else {
                return Err(format!("line {l:?} is not `name value`"));
            };
            let v: u64 = v
                .parse()
                .map_err(|_| format!("{n}: value {v:?} is not an integer"))?;
            Ok((n.to_owned(), v as f64))
        })
        .collect()
}

/// Maps parsed tables to observations.
pub fn observations(
    netstat_and_snmp: &[ProcStat],
    snmp6: &[(String, f64)],
    out: &mut Vec<Observation>,
) {
    for s in netstat_and_snmp {
        let metric = match s.table.as_str() {
            "Tcp" | "TcpExt" => "kappie_tcp_connection_stats",
            "Ip" | "IpExt" => "kappie_ip_connection_stats",
            "Udp" => "kappie_udp_connection_stats",
            _ => continue,
        };
        if NOT_COUNTERS.contains(&(s.table.as_str(), s.name.as_str())) {
            continue;
        }
        out.push(Observation::counter(
            metric,
            vec![("statistic_name", s.name.clone())],
            s.value,
        ));
    }
    for (n, v) in snmp6 {
        if n.starts_with("Udp6") {
            out.push(Observation::counter(
                "kappie_udp_connection_stats",
                vec![("statistic_name", n.clone())],
                *v,
            ));
        }
    }
}

/// The source.
pub struct NetstatSource {
    proc_root: PathBuf,
}

impl NetstatSource {
    pub fn new(proc_root: PathBuf) -> Self {
        NetstatSource { proc_root }
    }
}

impl Source for NetstatSource {
    fn name(&self) -> &'static str {
        "netstat"
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        let mut stats = Vec::new();
        for f in ["net/netstat", "net/snmp"] {
            let path = self.proc_root.join(f);
            let text = read(path.clone())?;
            stats.extend(parse_netstat(&text).map_err(|msg| SourceError::Parse { path, msg })?);
        }
        // A kernel without IPv6 has no snmp6.
        let path = self.proc_root.join("net/snmp6");
        let snmp6 = match std::fs::read_to_string(&path) {
            Ok(text) => parse_snmp6(&text).map_err(|msg| SourceError::Parse { path, msg })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(SourceError::Read { path, err }),
        };
        observations(&stats, &snmp6, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    #[test]
    fn parses_captured_netstat_and_snmp() {
        let ns = parse_netstat(&fixture("proc_net_netstat")).unwrap();
        assert!(ns
            .iter()
            .any(|s| s.table == "TcpExt" && s.name == "DelayedACKs"));
        assert!(ns
            .iter()
            .any(|s| s.table == "IpExt" && s.name == "InOctets"));
        let snmp = parse_netstat(&fixture("proc_net_snmp")).unwrap();
        let mc = snmp
            .iter()
            .find(|s| s.table == "Tcp" && s.name == "MaxConn")
            .unwrap();
        assert_eq!(mc.value, -1.0);
        let snmp6 = parse_snmp6(&fixture("proc_net_snmp6")).unwrap();
        assert!(snmp6.iter().any(|(n, _)| n == "Udp6InDatagrams"));

        let mut all = ns;
        all.extend(snmp);
        let mut out = Vec::new();
        observations(&all, &snmp6, &mut out);
        let names = |m: &str| -> Vec<String> {
            out.iter()
                .filter(|o| o.metric == m)
                .map(|o| o.labels[0].1.clone())
                .collect()
        };
        let tcp = names("kappie_tcp_connection_stats");
        assert!(tcp.contains(&"DelayedACKs".to_string()));
        assert!(tcp.contains(&"ActiveOpens".to_string()));
        assert!(
            !tcp.contains(&"CurrEstab".to_string()),
            "gauges are not counters"
        );
        let ip = names("kappie_ip_connection_stats");
        assert!(ip.contains(&"InReceives".to_string()) && ip.contains(&"InOctets".to_string()));
        assert!(!ip.contains(&"DefaultTTL".to_string()));
        let udp = names("kappie_udp_connection_stats");
        assert!(udp.contains(&"NoPorts".to_string()) && udp.contains(&"Udp6NoPorts".to_string()));
        // No name appears twice within one metric.
        for m in [
            "kappie_tcp_connection_stats",
            "kappie_ip_connection_stats",
            "kappie_udp_connection_stats",
        ] {
            let mut n = names(m);
            let len = n.len();
            n.sort();
            n.dedup();
            assert_eq!(n.len(), len, "{m} has duplicate statistic names");
        }
    }

    #[test]
    fn rejects_malformed_tables() {
        assert!(parse_netstat("Tcp: A B\nTcp: 1\n").is_err());
        assert!(parse_netstat("Tcp: A B\n").is_err());
        assert!(parse_netstat("Tcp: A\nUdp: 1\n").is_err());
        assert!(parse_netstat("Tcp: A\nTcp: x\n").is_err());
        assert!(parse_snmp6("Udp6InDatagrams\n").is_err());
    }
}
