//! The eBPF programs against the real kernel, in network namespaces and a veth pair the test
//! makes: counts are compared with the traffic the test sends and with the interface's own
//! statistics. The link carries nothing else (static neighbours, IPv6 off) and drops are
//! filtered by the test's own namespace, so the assertions are equalities.

use kappie_ebpf::{DIR_EGRESS, DIR_INGRESS};
use kappie_node_shipper::sources::ebpf::{EbpfConfig, EbpfSource, Snapshot};
use kappie_testkit::{can_netns, Netns, Veth};
use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

fn quiet_link(ns: &Netns, ifname: &str, peer_ip: &str, peer_ns: &Netns, peer_if: &str) {
    ns.output(
        "sysctl",
        &["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")],
    );
    let mac = peer_ns.output("cat", &[&format!("/sys/class/net/{peer_if}/address")]);
    ns.output(
        "ip",
        &[
            "neigh",
            "replace",
            peer_ip,
            "lladdr",
            mac.trim(),
            "dev",
            ifname,
            "nud",
            "permanent",
        ],
    );
}

fn stat(ns: &Netns, ifname: &str, name: &str) -> u64 {
    ns.output(
        "cat",
        &[&format!("/sys/class/net/{ifname}/statistics/{name}")],
    )
    .trim()
    .parse()
    .unwrap()
}

struct PinDir(PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn drops_in(s: &Snapshot, netns: u32, reason: u32) -> (u64, u64) {
    s.drops
        .iter()
        .filter(|(k, _)| k.netns == netns && k.reason == reason)
        .fold((0, 0), |a, (_, c)| (a.0 + c.packets, a.1 + c.bytes))
}

#[test]
fn udp_to_a_closed_port_counts_forwards_and_no_socket_drops_exactly() {
    if !can_netns() {
        eprintln!("SKIPPED: needs root (CAP_BPF, CAP_NET_ADMIN) and iproute2; CI runs as root");
        return;
    }
    let client = Netns::new("ebpfc");
    let server = Netns::new("ebpfs");
    let veth = Veth::new(&client, &server, 11);
    quiet_link(
        &client,
        &veth.a_if,
        &veth.b_addr4.to_string(),
        &server,
        &veth.b_if,
    );
    quiet_link(
        &server,
        &veth.b_if,
        &veth.a_addr4.to_string(),
        &client,
        &veth.a_if,
    );
    std::thread::sleep(Duration::from_millis(300));

    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/kappie-test-{}",
        std::process::id()
    )));
    let config = EbpfConfig {
        interfaces: vec![veth.b_if.clone()],
        pin_dir: pins.0.clone(),
        drops: true,
    };
    let src = server
        .enter(|| EbpfSource::start(&config))
        .expect("eBPF programs load and attach");
    let netns = std::fs::metadata(format!("/var/run/netns/{}", server.name))
        .unwrap()
        .ino() as u32;
    let ifindex: u32 = server
        .output("cat", &[&format!("/sys/class/net/{}/ifindex", veth.b_if)])
        .trim()
        .parse()
        .unwrap();
    let no_socket = (0..1000u32)
        .find(|r| src.reason_name(*r) == "NO_SOCKET")
        .expect("NO_SOCKET in BTF");

    let before = src.snapshot().unwrap();
    let (rx0, rxb0, tx0, txb0) = (
        stat(&server, &veth.b_if, "rx_packets"),
        stat(&server, &veth.b_if, "rx_bytes"),
        stat(&server, &veth.b_if, "tx_packets"),
        stat(&server, &veth.b_if, "tx_bytes"),
    );
    const N: u64 = 200;
    const SIZE: usize = 100;
    let target = format!("{}:9", veth.b_addr4);
    client.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..N {
            s.send_to(&[7u8; SIZE], target.as_str()).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = src.snapshot().unwrap();
    let (rx1, rxb1, tx1, txb1) = (
        stat(&server, &veth.b_if, "rx_packets"),
        stat(&server, &veth.b_if, "rx_bytes"),
        stat(&server, &veth.b_if, "tx_packets"),
        stat(&server, &veth.b_if, "tx_bytes"),
    );

    let fwd = |s: &Snapshot, dir: u32| {
        s.forward
            .iter()
            .find(|(k, _)| k.ifindex == ifindex && k.direction == dir)
            .map(|(_, c)| (c.packets, c.bytes))
            .unwrap_or((0, 0))
    };
    let (ip0, ib0) = fwd(&before, DIR_INGRESS);
    let (ip1, ib1) = fwd(&after, DIR_INGRESS);
    assert_eq!(ip1 - ip0, N, "ingress packets");
    assert_eq!(
        ip1 - ip0,
        rx1 - rx0,
        "ingress packets equal the interface's rx_packets"
    );
    assert_eq!(
        ib1 - ib0,
        rxb1 - rxb0,
        "ingress bytes equal the interface's rx_bytes"
    );
    let (ep0, eb0) = fwd(&before, DIR_EGRESS);
    let (ep1, eb1) = fwd(&after, DIR_EGRESS);
    assert_eq!(
        ep1 - ep0,
        tx1 - tx0,
        "egress packets (ICMP port unreachable, rate limited) equal tx_packets"
    );
    assert_eq!(eb1 - eb0, txb1 - txb0, "egress bytes equal tx_bytes");

    let (dp0, db0) = drops_in(&before, netns, no_socket);
    let (dp1, db1) = drops_in(&after, netns, no_socket);
    assert_eq!(dp1 - dp0, N, "NO_SOCKET drops in the server namespace");
    // At the drop (in the UDP receive path) the skb holds the UDP header and payload.
    assert_eq!(db1 - db0, N * (8 + SIZE as u64), "NO_SOCKET drop bytes");
    drop(src);
}
