//! The checks behind the node shipper's fuzz target, shared as source (`#[path]`) by
//! `fuzz/fuzz_targets/node_parsers.rs` and the stable regression test
//! `node-shipper/tests/fuzz_regressions.rs`. The shipper parses text it does not control:
//! /proc files (a hostile or odd kernel, or a container's fake /proc), a Cilium agent's
//! Prometheus text exposition (anything listening on its port), and on Windows the output of
//! vfpctrl and HNS's JSON; and binary answers of the kernel it should not trust blindly
//! (sock_diag datagrams, ethtool string sets and statistics, BTF). A check panics exactly when the fuzzer should report a crash;
//! `Err` is always a fine answer.

use kappie_node_shipper::sources::windows::{hns, vfp};
use kappie_node_shipper::sources::{btf, cilium, ethtool, netstat, sockdiag, sockets};

/// Every parser of untrusted text gets the input; reason names stay UPPER_SNAKE.
pub fn node_parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = netstat::parse_netstat(&text);
    let _ = netstat::parse_snmp6(&text);
    if let Ok(entries) = sockets::parse_socket_table(&text) {
        let _ = sockets::count_states(&entries);
        let (top, _) = sockets::top_remotes(&entries, 3);
        assert!(top.len() <= 3, "top_remotes kept {} of 3", top.len());
    }
    let _ = cilium::parse(&text);
    let reason = cilium::reason_name(&text);
    assert!(
        reason
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !reason.starts_with('_')
            && !reason.ends_with('_')
            && !reason.contains("__"),
        "reason {reason:?} is not UPPER_SNAKE"
    );
    let _ = hns::parse_endpoints(&text);
    let _ = hns::parse_endpoint_stats(&text);
    for port in vfp::parse_port_list(&text) {
        let _ = vfp::switch_drop_readings(&port);
    }
    let counters = vfp::parse_port_counters(&text);
    let _ = vfp::counter_readings("port", &counters);
    // Binary answers of the kernel: a sock_diag netlink datagram, ethtool's string set and
    // statistics, and BTF (the drop reasons' names come from the vmlinux BTF file).
    let mut sockets = 0;
    let _ = sockdiag::parse_datagram(data, 1, |_| sockets += 1);
    assert!(
        sockets <= data.len(),
        "{sockets} sockets from {} bytes",
        data.len()
    );
    let n = data.len() / 8 + 1;
    assert!(ethtool::parse_strings(data, n).len() <= n);
    assert!(ethtool::parse_values(data, n).len() <= n);
    let _ = btf::enum_members(data, "skb_drop_reason");
    let _ = btf::drop_reasons_in(data);
}
