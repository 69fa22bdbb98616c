//! The eBPF programs against the real kernel, in network namespaces and a veth pair the test
//! makes: counts are compared with the traffic the test sends and with the interface's own
//! statistics. The link carries nothing else (static neighbours, IPv6 off) and drops are
//! filtered by the test's own namespace, so the assertions are equalities.

use kappie_ebpf::{DIR_EGRESS, DIR_INGRESS};
use kappie_node_shipper::sources::ebpf::{EbpfConfig, EbpfSource, Snapshot};
use kappie_testkit::need::{NETNS, NFT};
use kappie_testkit::{require, Need, Netns, Veth};
use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

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

/// Two namespaces joined by a veth pair that carries only the test's traffic, and the
/// programs' configuration for the server end.
struct Setup {
    client: Netns,
    server: Netns,
    veth: Veth,
    pins: PinDir,
    config: EbpfConfig,
    netns: u32,
    ifindex: u32,
}

/// `None` (the test skips, or fails when `CI` is set) when the machine lacks what the
/// programs and the namespaces need. bpffs and tracefs are not checked: the source mounts
/// them itself.
fn setup(tag: &str, net: u8) -> Option<Setup> {
    setup_with(tag, net, None)
}

/// [`setup`] with the server end's interface index chosen (`None`: the kernel's next).
fn setup_with(tag: &str, net: u8, server_ifindex: Option<u32>) -> Option<Setup> {
    if !require(&[NETNS.as_slice(), &[Need::KernelBtf]].concat()) {
        return None;
    }
    let client = Netns::new(&format!("{tag}c"));
    let server = Netns::new(&format!("{tag}s"));
    let veth = match server_ifindex {
        None => Veth::new(&client, &server, net),
        Some(index) => veth_with_index(&client, &server, net, index),
    };
    veth.quiet(&client, &server);
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/kappie-test-{tag}-{}",
        std::process::id()
    )));
    let config = EbpfConfig {
        drops_tracepoint: false,
        interfaces: vec![veth.b_if.clone()],
        pin_dir: pins.0.clone(),
        drops: true,
        forward: true,
        tcx_only: false,
    };
    let netns = std::fs::metadata(format!("/var/run/netns/{}", server.name))
        .unwrap()
        .ino() as u32;
    let ifindex = server
        .output("cat", &[&format!("/sys/class/net/{}/ifindex", veth.b_if)])
        .trim()
        .parse()
        .unwrap();
    Some(Setup {
        client,
        server,
        veth,
        pins,
        config,
        netns,
        ifindex,
    })
}

/// A veth pair like [`Veth::new`]'s (IPv4 addresses only) whose server end has interface
/// index `index`.
fn veth_with_index(client: &Netns, server: &Netns, net: u8, index: u32) -> Veth {
    let v = Veth {
        a_addr4: std::net::Ipv4Addr::new(198, 18, net, 1),
        b_addr4: std::net::Ipv4Addr::new(198, 18, net, 2),
        a_addr6: format!("2001:db8:{net}::1").parse().unwrap(),
        b_addr6: format!("2001:db8:{net}::2").parse().unwrap(),
        a_if: format!("kva{net}"),
        b_if: format!("kvb{net}"),
    };
    let index = index.to_string();
    let add = [
        "link",
        "add",
        &v.b_if,
        "netns",
        &server.name,
        "index",
        &index,
        "type",
        "veth",
        "peer",
        "name",
        &v.a_if,
        "netns",
        &client.name,
    ];
    kappie_testkit::run("ip", &add);
    for (ns, ifname, a4) in [(client, &v.a_if, v.a_addr4), (server, &v.b_if, v.b_addr4)] {
        ns.output("ip", &["addr", "add", &format!("{a4}/24"), "dev", ifname]);
        ns.output("ip", &["link", "set", ifname, "up"]);
    }
    v
}

impl Setup {
    fn start(&self) -> EbpfSource {
        self.server
            .enter(|| EbpfSource::start(&self.config))
            .expect("eBPF programs load and attach")
    }

    fn send_udp(&self, n: u64, size: usize) {
        let target = format!("{}:9", self.veth.b_addr4);
        self.client.enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..n {
                s.send_to(&vec![7u8; size], target.as_str()).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    }

    fn stats(&self) -> [u64; 4] {
        ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"]
            .map(|n| stat(&self.server, &self.veth.b_if, n))
    }
}

fn forward(s: &Snapshot, ifindex: u32, dir: u32) -> (u64, u64) {
    s.forward
        .iter()
        .find(|(k, _)| k.ifindex == ifindex && k.direction == dir)
        .map(|(_, c)| (c.packets, c.bytes))
        .unwrap_or((0, 0))
}

fn reason(src: &EbpfSource, name: &str) -> u32 {
    (0..1000u32)
        .find(|r| src.reason_name(*r) == name)
        .unwrap_or_else(|| panic!("{name} not in BTF"))
}

#[test]
fn udp_to_a_closed_port_counts_forwards_and_no_socket_drops_exactly() {
    let Some(t) = setup("ebpfu", 11) else { return };
    udp_to_closed_port(t);
}

/// The same with drops counted by the `skb:kfree_skb` tracepoint, the fallback where BTF
/// programs are not allowed.
#[test]
fn tracepoint_fallback_counts_no_socket_drops_exactly() {
    let Some(mut t) = setup("ebpfp", 16) else {
        return;
    };
    t.config.drops_tracepoint = true;
    udp_to_closed_port(t);
}

fn udp_to_closed_port(t: Setup) {
    let src = t.start();
    let no_socket = reason(&src, "NO_SOCKET");
    let before = src.snapshot().unwrap();
    let [rx0, rxb0, tx0, txb0] = t.stats();
    const N: u64 = 200;
    const SIZE: usize = 100;
    t.send_udp(N, SIZE);
    let after = src.snapshot().unwrap();
    let [rx1, rxb1, tx1, txb1] = t.stats();

    let (ip0, ib0) = forward(&before, t.ifindex, DIR_INGRESS);
    let (ip1, ib1) = forward(&after, t.ifindex, DIR_INGRESS);
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
    let (ep0, eb0) = forward(&before, t.ifindex, DIR_EGRESS);
    let (ep1, eb1) = forward(&after, t.ifindex, DIR_EGRESS);
    assert_eq!(
        ep1 - ep0,
        tx1 - tx0,
        "egress packets (ICMP port unreachable, rate limited) equal tx_packets"
    );
    assert_eq!(eb1 - eb0, txb1 - txb0, "egress bytes equal tx_bytes");

    let (dp0, db0) = drops_in(&before, t.netns, no_socket);
    let (dp1, db1) = drops_in(&after, t.netns, no_socket);
    assert_eq!(dp1 - dp0, N, "NO_SOCKET drops in the server namespace");
    // At the drop (in the UDP receive path) the skb holds the UDP header and payload.
    assert_eq!(db1 - db0, N * (8 + SIZE as u64), "NO_SOCKET drop bytes");
    src.detach();
}

/// Interfaces with an index at or above `kappie_ebpf::FORWARD_SLOTS` are counted in the hash
/// map instead of the array: the same exact counts.
#[test]
fn an_interface_index_above_the_array_counts_exactly() {
    let index = kappie_ebpf::FORWARD_SLOTS + 44;
    let Some(t) = setup_with("ebpfh", 17, Some(index)) else {
        return;
    };
    assert_eq!(t.ifindex, index);
    udp_to_closed_port(t);
}

#[test]
fn pinned_programs_count_through_a_restart_and_detach_stops_them() {
    let Some(t) = setup("ebpfr", 12) else { return };
    let a = t.start();
    let no_socket = reason(&a, "NO_SOCKET");
    let before = a.snapshot().unwrap();
    t.send_udp(50, 10);
    drop(a); // as a SIGKILL would: no detach
    t.send_udp(50, 10); // no shipper running
    let b = t.start();
    t.send_udp(50, 10);
    let after = b.snapshot().unwrap();
    assert_eq!(
        forward(&after, t.ifindex, DIR_INGRESS).0 - forward(&before, t.ifindex, DIR_INGRESS).0,
        150
    );
    assert_eq!(
        drops_in(&after, t.netns, no_socket).0 - drops_in(&before, t.netns, no_socket).0,
        150
    );

    b.detach();
    assert!(
        std::fs::read_dir(&t.pins.0)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("link-")),
        "detach removes the pinned links"
    );
    t.send_udp(50, 10); // detached: not counted
    let c = t.start();
    let last = c.snapshot().unwrap();
    assert_eq!(
        forward(&last, t.ifindex, DIR_INGRESS).0,
        forward(&after, t.ifindex, DIR_INGRESS).0,
        "nothing counted while detached"
    );
    assert_eq!(
        drops_in(&last, t.netns, no_socket).0,
        drops_in(&after, t.netns, no_socket).0
    );
    c.detach();
}

/// One TCP connection opened, used and closed, and one refused, against `addr` in the
/// server namespace; checks the flag counts the exchange implies.
fn tcp_exchange(t: &Setup, addr: std::net::IpAddr, link_is_quiet: bool) {
    let src = t.start();
    let listener = t
        .server
        .enter(|| std::net::TcpListener::bind((addr, 8080)).unwrap());
    let before = src.snapshot().unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut buf).unwrap();
        std::io::Write::write_all(&mut c, b"bye").unwrap();
        buf.len()
    });
    t.client.enter(|| {
        let mut c = std::net::TcpStream::connect((addr, 8080)).unwrap();
        std::io::Write::write_all(&mut c, &[1u8; 5000]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut back).unwrap();
        assert_eq!(back, b"bye");
        // A refused connection: SYN in, RST out.
        assert!(std::net::TcpStream::connect((addr, 8081)).is_err());
    });
    assert_eq!(server.join().unwrap(), 5000);
    std::thread::sleep(Duration::from_millis(300));
    let after = src.snapshot().unwrap();
    let flag = |s: &Snapshot, f: &str, dir: u32| -> u64 {
        let bit = kappie_ebpf::TCP_FLAGS.iter().position(|x| *x == f).unwrap() as u32;
        s.flags
            .iter()
            .filter(|(k, _)| k.ifindex == t.ifindex && k.direction == dir && k.flag == bit)
            .map(|(_, n)| *n)
            .sum()
    };
    let d = |f: &str, dir: u32| flag(&after, f, dir) - flag(&before, f, dir);
    let packets = |dir: u32| forward(&after, t.ifindex, dir).0 - forward(&before, t.ifindex, dir).0;
    // Into the server: two SYNs (one refused), one FIN; out: one SYN-ACK, one FIN, one RST.
    assert_eq!((d("SYN", DIR_INGRESS), d("SYN", DIR_EGRESS)), (2, 1));
    assert_eq!((d("FIN", DIR_INGRESS), d("FIN", DIR_EGRESS)), (1, 1));
    assert_eq!((d("RST", DIR_INGRESS), d("RST", DIR_EGRESS)), (0, 1));
    if link_is_quiet {
        // Every segment but the two SYNs carries ACK; the link carries nothing else.
        assert_eq!(d("ACK", DIR_INGRESS), packets(DIR_INGRESS) - 2);
        assert_eq!(d("ACK", DIR_EGRESS), packets(DIR_EGRESS));
    } else {
        assert!(d("ACK", DIR_INGRESS) >= 3 && d("ACK", DIR_EGRESS) >= 3);
    }
    assert!(d("PSH", DIR_INGRESS) >= 1 && d("PSH", DIR_EGRESS) >= 1);
    assert_eq!((d("URG", DIR_INGRESS), d("CWR", DIR_EGRESS)), (0, 0));
    src.detach();
}

#[test]
fn tcp_flags_match_the_exchange_ipv4() {
    let Some(t) = setup("ebpft", 13) else { return };
    tcp_exchange(&t, t.veth.b_addr4.into(), true);
}

#[test]
fn tcp_flags_match_the_exchange_ipv6() {
    let Some(t) = setup("ebpf6", 15) else { return };
    // IPv6 back on (setup turned it off for quiet IPv4 links); neighbour discovery now
    // shares the link, which changes packet counts but no TCP flag.
    for (ns, ifname, addr) in [
        (&t.client, &t.veth.a_if, t.veth.a_addr6),
        (&t.server, &t.veth.b_if, t.veth.b_addr6),
    ] {
        ns.output(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=0")],
        );
        ns.output(
            "ip",
            &[
                "addr",
                "replace",
                &format!("{addr}/64"),
                "dev",
                ifname,
                "nodad",
            ],
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    tcp_exchange(&t, t.veth.b_addr6.into(), false);
}

#[test]
fn nftables_drops_count_as_netfilter_drop_exactly() {
    if !require(&[NFT]) {
        return;
    }
    let Some(t) = setup("ebpfn", 14) else { return };
    let src = t.start();
    let nf = reason(&src, "NETFILTER_DROP");
    for cmd in [
        "add table inet kappie_test",
        "add chain inet kappie_test input { type filter hook input priority 0 ; }",
        "add rule inet kappie_test input udp dport 7777 counter drop",
    ] {
        t.server.output("nft", &cmd.split(' ').collect::<Vec<_>>());
    }
    let before = src.snapshot().unwrap();
    const N: u64 = 120;
    let target = format!("{}:7777", t.veth.b_addr4);
    t.client.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..N {
            s.send_to(&[1u8; 64], target.as_str()).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = src.snapshot().unwrap();
    // The rule's own counter: "counter packets P bytes B".
    let rules = t
        .server
        .output("nft", &["list", "chain", "inet", "kappie_test", "input"]);
    let words: Vec<&str> = rules.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "packets")
        .expect("rule counter");
    let (rule_packets, rule_bytes): (u64, u64) = (
        words[at + 1].parse().unwrap(),
        words[at + 3].parse().unwrap(),
    );
    assert_eq!(rule_packets, N);
    let (p0, b0) = drops_in(&before, t.netns, nf);
    let (p1, b1) = drops_in(&after, t.netns, nf);
    assert_eq!(
        p1 - p0,
        rule_packets,
        "NETFILTER_DROP drops equal the rule's counter"
    );
    assert_eq!(b1 - b0, rule_bytes, "and so do their bytes");
    src.detach();
}
