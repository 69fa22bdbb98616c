//! Each utility source against the live kernel, compared with what iproute2's `nstat`, `ss`
//! and `ip -s link`, and `ethtool -S`, report at the same moment.
//!
//! Counters are bracketed exactly: our reading before the tool's and our reading after it
//! must enclose the tool's value (counters only go up). Socket counts, which can go down
//! as well, are compared in a network namespace of the test's own, where nothing else
//! opens sockets, and so must be equal.

use kappie_node_shipper::source::{Observation, Source};
use kappie_node_shipper::sources::ethtool::NOT_COUNTERS;
use kappie_node_shipper::sources::interfaces::InterfacesSource;
use kappie_node_shipper::sources::netstat::NetstatSource;
use kappie_node_shipper::sources::sockets::{SocketsSource, TCP_STATES};
use kappie_testkit::need::{IPROUTE2, NETNS, PROCPS};
use kappie_testkit::{require, wait_for, with_unmounted, Need, Netns, Veth};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn collect(s: &mut dyn Source) -> Vec<Observation> {
    let mut out = Vec::new();
    s.collect(&mut out).unwrap();
    out
}

fn label<'a>(o: &'a Observation, name: &str) -> &'a str {
    o.labels
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn netstat_counters_match_nstat() {
    if !require(&[IPROUTE2]) {
        return;
    }
    let mut src = NetstatSource::new(PathBuf::from("/proc"));
    let before = collect(&mut src);
    let nstat: HashMap<String, f64> = tool("nstat", &["-asz"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect();
    let after = collect(&mut src);
    assert!(before.len() > 150, "only {} netstat counters", before.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((a.metric, &a.labels), (b.metric, &b.labels));
        let stat = label(a, "statistic_name");
        // nstat prefixes the table: TcpExt + DelayedACKs, Ip + InReceives, Udp6InDatagrams as is.
        let prefixes: &[&str] = match a.metric {
            "kappie_tcp_connection_stats" => &["Tcp", "TcpExt"],
            "kappie_ip_connection_stats" => &["Ip", "IpExt"],
            "kappie_udp_connection_stats" => &["Udp", ""],
            m => panic!("unexpected metric {m}"),
        };
        let n = prefixes
            .iter()
            .find_map(|p| nstat.get(&format!("{p}{stat}")))
            .unwrap_or_else(|| panic!("nstat has no counter for {} {stat}", a.metric));
        assert!(
            a.value <= *n && *n <= b.value,
            "{} {stat}: ours {} .. {} but nstat {n}",
            a.metric,
            a.value,
            b.value
        );
    }
}

#[test]
fn interface_counters_match_ip_link() {
    if !require(&[IPROUTE2]) {
        return;
    }
    let mut src = InterfacesSource::new(PathBuf::from("/sys"));
    let before = collect(&mut src);
    let links: serde_json::Value =
        serde_json::from_str(&tool("ip", &["-s", "-j", "link"])).unwrap();
    let after = collect(&mut src);
    let get = |obs: &[Observation], ifname: &str, stat: &str| -> f64 {
        obs.iter()
            .find(|o| label(o, "interface_name") == ifname && label(o, "statistic_name") == stat)
            .unwrap_or_else(|| panic!("no {stat} for {ifname}"))
            .value
    };
    let links = links.as_array().unwrap();
    assert!(!links.is_empty());
    for link in links {
        let ifname = link["ifname"].as_str().unwrap();
        let s = &link["stats64"];
        for (dir, field, stat) in [
            ("rx", "bytes", "rx_bytes"),
            ("rx", "packets", "rx_packets"),
            ("rx", "errors", "rx_errors"),
            ("rx", "dropped", "rx_dropped"),
            ("rx", "multicast", "multicast"),
            ("tx", "bytes", "tx_bytes"),
            ("tx", "packets", "tx_packets"),
            ("tx", "errors", "tx_errors"),
            ("tx", "dropped", "tx_dropped"),
            ("tx", "collisions", "collisions"),
        ] {
            let ip = s[dir][field]
                .as_f64()
                .unwrap_or_else(|| panic!("ip -s link has no {dir}.{field} for {ifname}"));
            let (a, b) = (get(&before, ifname, stat), get(&after, ifname, stat));
            assert!(
                a <= ip && ip <= b,
                "{ifname} {stat}: ours {a} .. {b} but ip -s link {ip}"
            );
        }
    }
}

fn ss_state(s: &str) -> &'static str {
    match s {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "UNCONN" | "CLOSE" => "CLOSE",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        "LISTEN" => "LISTEN",
        "CLOSING" => "CLOSING",
        other => panic!("unknown ss state {other}"),
    }
}

/// `ss -tanH` per state and `ss -uanH` lines, on the host.
fn ss_counts() -> (HashMap<&'static str, f64>, f64) {
    let mut counts: HashMap<&str, f64> = HashMap::new();
    for l in tool("ss", &["-tanH"]).lines() {
        *counts
            .entry(ss_state(l.split_whitespace().next().unwrap()))
            .or_default() += 1.0;
    }
    (counts, tool("ss", &["-uanH"]).lines().count() as f64)
}

/// `v` within the range `a`..`b` spans (either order), widened by `slack`.
fn between(v: f64, a: f64, b: f64, slack: f64) -> bool {
    a.min(b) - slack <= v && v <= a.max(b) + slack
}

/// Our gauges against `ss -tanH` and `ss -uanH` run right before and right after, on the
/// host.
fn sockets_near_ss_on_the_host(mut src: SocketsSource) {
    // The host's sockets churn while the test runs (other tests, benchmarks, the package
    // manager): ours must lie within what `ss` saw just before and just after, give or take
    // a few; the namespace tests below are exact.
    let (tcp_before, udp_before) = ss_counts();
    let ours = collect(&mut src);
    let (tcp_after, udp_after) = ss_counts();
    for o in ours.iter().filter(|o| o.metric == "kappie_tcp_state") {
        let state = label(o, "state");
        let before = tcp_before.get(state).copied().unwrap_or(0.0);
        let after = tcp_after.get(state).copied().unwrap_or(0.0);
        assert!(
            between(o.value, before, after, 5.0),
            "state {state}: ours {} ss before {before} after {after}",
            o.value
        );
    }
    let udp = ours
        .iter()
        .find(|o| o.metric == "kappie_udp_active_sockets")
        .unwrap()
        .value;
    assert!(
        between(udp, udp_before, udp_after, 3.0),
        "udp sockets: ours {udp} ss before {udp_before} after {udp_after}"
    );
}

#[test]
fn sockets_over_netlink_match_ss_on_the_host() {
    if !require(&[IPROUTE2]) {
        return;
    }
    sockets_near_ss_on_the_host(SocketsSource::netlink_only(100).unwrap());
}

#[test]
fn sockets_from_proc_match_ss_on_the_host() {
    if !require(&[IPROUTE2]) {
        return;
    }
    sockets_near_ss_on_the_host(SocketsSource::proc_only(PathBuf::from("/proc"), 100));
}

/// Remotes the namespace tests keep by name; the rest is `address="other"`.
const TOP: usize = 3;

/// A client namespace holding sockets of every kind the source counts, joined by a veth
/// pair to a server namespace:
/// - ESTABLISHED over the veth: 3 connections to the server's :8080 and 1 to :8081, per
///   family; over loopback, a v4 connection to a dual-stack listener (its accepted end is
///   an IPv6 socket with v4-mapped addresses);
/// - LISTEN: that dual-stack listener on [::]:7001 and one on 0.0.0.0:7000;
/// - TIME_WAIT: one connection to the server's :8082 per family, closed by the client first;
/// - UDP: bound on each family, and one connected to the server.
struct SocketScene {
    client: Netns,
    _server: Netns,
    sockets: (Vec<TcpListener>, Vec<TcpStream>, Vec<UdpSocket>),
}

/// `host:port` for either family.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl SocketScene {
    fn new(tag: &str, net: u8) -> SocketScene {
        let client = Netns::new(&format!("{tag}c"));
        let server = Netns::new(&format!("{tag}s"));
        let veth = Veth::new(&client, &server, net);
        let hosts = [veth.b_addr4.to_string(), veth.b_addr6.to_string()];
        let mut listeners: Vec<TcpListener> = server.enter(|| {
            let mut v = Vec::new();
            for port in [8080, 8081, 8082] {
                for h in &hosts {
                    v.push(TcpListener::bind(host_port(h, port)).unwrap());
                }
            }
            v
        });
        let (streams, closing, udp) = client.enter(|| {
            let mut streams = Vec::new();
            for h in &hosts {
                for port in [8080, 8080, 8080, 8081] {
                    streams.push(TcpStream::connect(host_port(h, port)).unwrap());
                }
            }
            let closing: Vec<TcpStream> = hosts
                .iter()
                .map(|h| TcpStream::connect(host_port(h, 8082)).unwrap())
                .collect();
            listeners.push(TcpListener::bind("0.0.0.0:7000").unwrap());
            let dual = TcpListener::bind("[::]:7001").unwrap();
            streams.push(TcpStream::connect("127.0.0.1:7001").unwrap());
            streams.push(dual.accept().unwrap().0);
            listeners.push(dual);
            let connected = UdpSocket::bind("0.0.0.0:0").unwrap();
            connected.connect(host_port(&hosts[0], 5353)).unwrap();
            let udp = vec![
                UdpSocket::bind("0.0.0.0:0").unwrap(),
                UdpSocket::bind("[::]:0").unwrap(),
                connected,
            ];
            (streams, closing, udp)
        });
        let scene = SocketScene {
            client,
            _server: server,
            sockets: (listeners, streams, udp),
        };
        // TIME_WAIT on the client's side: the client closes first and waits in FIN_WAIT2
        // (its FIN acknowledged), then the server closes its end. Closing both at once
        // could make it a simultaneous close, whose TIME_WAIT may end up on either side.
        drop(closing);
        scene.wait_for_states("the client's FIN acknowledged", &[("FIN-WAIT-2", 2)]);
        for l in &scene.sockets.0[4..6] {
            drop(l.accept().unwrap());
        }
        scene.wait_for_states(
            "both closed connections in TIME_WAIT",
            &[("TIME-WAIT", 2), ("FIN-WAIT", 0)],
        );
        scene
    }

    /// Waits until `ss -tan` in the client namespace shows `n` sockets in each state.
    fn wait_for_states(&self, what: &str, want: &[(&str, usize)]) {
        wait_for(what, Duration::from_secs(10), || {
            let ss = self.client.output("ss", &["-tanH"]);
            let n = |s: &str| ss.lines().filter(|l| l.starts_with(s)).count();
            want.iter().all(|&(s, k)| n(s) == k).then_some(())
        });
    }

    /// The observations of a source made by `make` and collected in the client namespace
    /// (the same thread), whether it read netlink, and what `ss` shows right after.
    fn collect(
        &self,
        make: impl FnOnce() -> SocketsSource + Send,
    ) -> (Vec<String>, bool, Vec<String>) {
        let (ours, netlink) = self.client.enter(|| {
            let mut src = make();
            (render(&collect(&mut src)), src.uses_netlink())
        });
        let ss = expected_from_ss(
            &self.client.output("ss", &["-tanH"]),
            &self.client.output("ss", &["-uanH"]),
            TOP,
        );
        (ours, netlink, ss)
    }
}

/// Observations as sorted `metric{labels} value` lines, for whole-set comparison.
fn render(obs: &[Observation]) -> Vec<String> {
    let mut v: Vec<String> = obs
        .iter()
        .map(|o| {
            let labels: Vec<String> = o.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
            format!("{}{{{}}} {}", o.metric, labels.join(","), o.value)
        })
        .collect();
    v.sort();
    v
}

/// A peer column of `ss -n` (`198.18.0.2:8080`, `[2001:db8::2]:80`, `0.0.0.0:*`, `*:*`,
/// `[::ffff:127.0.0.1]:7001`), with a v4-mapped address as IPv4, as the source reports it.
fn ss_peer(s: &str) -> SocketAddr {
    let (host, port) = s.rsplit_once(':').unwrap();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.split('%').next().unwrap();
    let ip: IpAddr = if host == "*" {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        host.parse().unwrap_or_else(|_| panic!("ss peer {s:?}"))
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(
        ip,
        if port == "*" {
            0
        } else {
            port.parse().unwrap()
        },
    )
}

/// What the source must report, worked out from `ss -tanH` and `ss -uanH` by SPEC §1's
/// rules: every TCP state (zeros included); the `top` remotes by count (ties by address,
/// then port) without loopback and unspecified peers, and the rest as `other`; the number
/// of UDP sockets.
fn expected_from_ss(ss_tcp: &str, ss_udp: &str, top: usize) -> Vec<String> {
    let mut states: HashMap<&str, usize> = TCP_STATES.iter().map(|s| (*s, 0)).collect();
    let mut peers: HashMap<SocketAddr, usize> = HashMap::new();
    for l in ss_tcp.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        *states.get_mut(ss_state(f[0])).unwrap() += 1;
        let peer = ss_peer(f[4]);
        if !peer.ip().is_loopback() && !peer.ip().is_unspecified() {
            *peers.entry(peer).or_default() += 1;
        }
    }
    let mut obs: Vec<Observation> = states
        .into_iter()
        .map(|(s, n)| {
            Observation::gauge("kappie_tcp_state", vec![("state", s.to_owned())], n as f64)
        })
        .collect();
    let mut peers: Vec<(SocketAddr, usize)> = peers.into_iter().collect();
    peers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let other: usize = peers.iter().skip(top).map(|p| p.1).sum();
    for (a, n) in peers.into_iter().take(top) {
        obs.push(Observation::gauge(
            "kappie_tcp_connection_remote",
            vec![
                ("address", a.ip().to_string()),
                ("port", a.port().to_string()),
            ],
            n as f64,
        ));
    }
    obs.push(Observation::gauge(
        "kappie_tcp_connection_remote",
        vec![("address", "other".to_owned())],
        other as f64,
    ));
    obs.push(Observation::gauge(
        "kappie_udp_active_sockets",
        vec![],
        ss_udp.lines().count() as f64,
    ));
    render(&obs)
}

/// The scene is what `SocketScene` says (so that "equal to ss" compares something).
fn assert_scene(ss: &[String], net: u8) {
    for line in [
        r#"kappie_tcp_state{state="ESTABLISHED"} 10"#.to_owned(),
        r#"kappie_tcp_state{state="LISTEN"} 2"#.to_owned(),
        r#"kappie_tcp_state{state="TIME_WAIT"} 2"#.to_owned(),
        format!(r#"kappie_tcp_connection_remote{{address="198.18.{net}.2",port="8080"}} 3"#),
        format!(r#"kappie_tcp_connection_remote{{address="2001:db8:{net}::2",port="8080"}} 3"#),
        format!(r#"kappie_tcp_connection_remote{{address="198.18.{net}.2",port="8081"}} 1"#),
        r#"kappie_tcp_connection_remote{address="other"} 3"#.to_owned(),
        "kappie_udp_active_sockets{} 3".to_owned(),
    ] {
        assert!(ss.contains(&line), "{line} not in {ss:#?}");
    }
}

#[test]
fn sockets_over_netlink_match_ss_in_a_namespace() {
    if !require(&NETNS) {
        return;
    }
    let scene = SocketScene::new("sockn", 7);
    let (ours, netlink, ss) = scene.collect(|| SocketsSource::netlink_only(TOP).unwrap());
    assert_scene(&ss, 7);
    assert!(netlink);
    assert_eq!(ours, ss);
}

#[test]
fn sockets_from_proc_match_ss_in_a_namespace() {
    if !require(&NETNS) {
        return;
    }
    let scene = SocketScene::new("sockp", 42);
    // /proc/thread-self/net is the collecting thread's namespace.
    let (ours, netlink, ss) =
        scene.collect(|| SocketsSource::proc_only(PathBuf::from("/proc/thread-self"), TOP));
    assert_scene(&ss, 42);
    assert!(!netlink);
    assert_eq!(ours, ss);
}

#[test]
fn sockets_source_reads_netlink_and_agrees_with_proc() {
    if !require(&NETNS) {
        return;
    }
    let scene = SocketScene::new("socka", 43);
    let (ours, uses_netlink, from_proc) = scene.client.enter(|| {
        let mut src = SocketsSource::new(PathBuf::from("/proc/thread-self"), TOP);
        let ours = render(&collect(&mut src));
        let mut proc = SocketsSource::proc_only(PathBuf::from("/proc/thread-self"), TOP);
        (ours, src.uses_netlink(), render(&collect(&mut proc)))
    });
    assert!(uses_netlink, "netlink is there, so the source reads it");
    assert_eq!(ours, from_proc);
}

/// Installs, on the calling thread only, a seccomp filter under which socket(AF_NETLINK, …)
/// fails with EPERM, as in a sandbox that forbids netlink.
fn refuse_netlink_on_this_thread() {
    // struct seccomp_data: nr (i32) at 0, arch at 4, ip at 8, args[6] (u64) from 16.
    const ARG0_LOW: u32 = if cfg!(target_endian = "little") {
        16
    } else {
        20
    };
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let mut prog = [
        stmt(load, 0),
        jeq(libc::SYS_socket as u32, 3),
        stmt(load, ARG0_LOW),
        jeq(libc::AF_NETLINK as u32, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        // Flags 0: this thread only (no SECCOMP_FILTER_FLAG_TSYNC); it ends with the thread.
        let rc = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn sockets_fall_back_to_proc_when_netlink_is_refused() {
    if !require(&NETNS) {
        return;
    }
    let scene = SocketScene::new("sockf", 44);
    let (ours, netlink, ss) = scene.collect(|| {
        refuse_netlink_on_this_thread();
        let e = SocketsSource::netlink_only(TOP)
            .err()
            .expect("netlink refused");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        SocketsSource::new(PathBuf::from("/proc/thread-self"), TOP)
    });
    assert_scene(&ss, 44);
    assert!(!netlink, "the source fell back to /proc");
    assert_eq!(ours, ss);
}

const ETHTOOL: Need = Need::Tool {
    program: "ethtool",
    package: "ethtool",
};

/// `ethtool -S IFNAME` as (name, value) in its order; empty when the interface has no driver
/// statistics (ethtool then fails with "no stats available").
fn ethtool_s(ifname: &str) -> Vec<(String, f64)> {
    let out = Command::new("ethtool")
        .args(["-S", ifname])
        .output()
        .expect("ethtool");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no stats available"),
            "ethtool -S {ifname}: {err}"
        );
        return Vec::new();
    }
    // "NIC statistics:" then one "     <name>: <value>" line per statistic, the name
    // printed as the driver has it (`%.*s`), so split at the last ": ".
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip_while(|l| !l.starts_with("NIC statistics:"))
        .skip(1)
        .map(|l| {
            let l = l
                .strip_prefix("     ")
                .unwrap_or_else(|| panic!("ethtool -S {ifname}: unexpected line {l:?}"));
            let (name, v) = l.rsplit_once(": ").unwrap();
            (name.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// The names of `ifname`'s sysfs counters (under /sys as the calling thread sees it).
fn sysfs_names(ifname: &str) -> HashSet<String> {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/statistics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// What `ethtool -S` shows that the source must report: its statistics less the documented
/// non-counters and less those named like sysfs counters (the sysfs value is kept).
fn exported(ethtool: &[(String, f64)], sysfs: &HashSet<String>) -> Vec<(String, f64)> {
    ethtool
        .iter()
        .filter(|(n, _)| !NOT_COUNTERS.contains(&n.as_str()) && !sysfs.contains(n))
        .cloned()
        .collect()
}

/// The driver statistics the source reported for `ifname`: its statistics not in sysfs.
fn driver_stats(obs: &[Observation], ifname: &str, sysfs: &HashSet<String>) -> Vec<(String, f64)> {
    obs.iter()
        .filter(|o| label(o, "interface_name") == ifname)
        .filter(|o| !sysfs.contains(label(o, "statistic_name")))
        .map(|o| (label(o, "statistic_name").to_owned(), o.value))
        .collect()
}

/// Runs `f` on a thread in `ns` that sees `ns`'s own sysfs at /sys, as `ip netns exec`
/// arranges (sysfs shows the interfaces of the namespace that mounts it), in a private mount
/// namespace that goes away with the thread.
fn in_netns_with_sysfs<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    ns.enter(|| {
        with_unmounted(&[], || {
            let rc = unsafe {
                libc::mount(
                    c"sysfs".as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "mount sysfs: {}", std::io::Error::last_os_error());
            f()
        })
    })
}

#[test]
fn driver_statistics_match_ethtool_in_a_namespace() {
    if !require(&[Need::Root, IPROUTE2, PROCPS, ETHTOOL]) {
        return;
    }
    let a = Netns::new("etha");
    let b = Netns::new("ethb");
    let veth = Veth::new(&a, &b, 41);
    veth.quiet(&a, &b);
    // Traffic from b to a, done when a has received every datagram.
    let server = a.enter(|| UdpSocket::bind((veth.a_addr4, 9000)).unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    b.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..20 {
            s.send_to(b"kappie", (veth.a_addr4, 9000)).unwrap();
        }
    });
    let mut buf = [0u8; 16];
    for _ in 0..20 {
        server.recv(&mut buf).expect("every datagram arrives");
    }

    let ifname = veth.a_if.clone();
    let (before, ethtool, after, sysfs, lo_sysfs, lo_ethtool) = in_netns_with_sysfs(&a, || {
        let mut src = InterfacesSource::new(PathBuf::from("/sys"));
        let before = collect(&mut src);
        let ethtool = ethtool_s(&ifname);
        let after = collect(&mut src);
        (
            before,
            ethtool,
            after,
            sysfs_names(&ifname),
            sysfs_names("lo"),
            ethtool_s("lo"),
        )
    });

    assert!(
        ethtool.iter().any(|(n, _)| n == "peer_ifindex"),
        "veth's set as ethtool shows it: {ethtool:?}"
    );
    let want = exported(&ethtool, &sysfs);
    assert!(want.len() >= 9, "veth has per-queue statistics: {want:?}");
    // The link is quiet: nothing moves between the three reads, so equal, not bracketed.
    assert_eq!(driver_stats(&before, &ifname, &sysfs), want);
    assert_eq!(driver_stats(&after, &ifname, &sysfs), want);
    assert!(
        !before
            .iter()
            .any(|o| label(o, "statistic_name") == "peer_ifindex"),
        "an interface index is no counter"
    );
    let rx_packets = before
        .iter()
        .find(|o| {
            label(o, "interface_name") == ifname && label(o, "statistic_name") == "rx_packets"
        })
        .unwrap()
        .value;
    assert!(
        rx_packets >= 20.0,
        "sysfs counters are still there: {rx_packets}"
    );
    assert!(lo_ethtool.is_empty(), "loopback has no driver statistics");
    assert_eq!(driver_stats(&before, "lo", &lo_sysfs), vec![]);
    drop(server);
}

#[test]
fn driver_statistics_are_read_again_when_the_queue_count_changes() {
    if !require(&[Need::Root, IPROUTE2, ETHTOOL]) {
        return;
    }
    let ns = Netns::new("ethq");
    // Both ends in one namespace, 4 queues each (independent of the number of CPUs, which
    // is veth's default), so that `ethtool -L` can shrink and grow the set.
    tool(
        "ip",
        &[
            "-n",
            &ns.name,
            "link",
            "add",
            "kvq0",
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            "kvq1",
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
        ],
    );
    for ifname in ["kvq0", "kvq1"] {
        tool("ip", &["-n", &ns.name, "link", "set", ifname, "up"]);
    }
    let rounds = in_netns_with_sysfs(&ns, || {
        let mut src = InterfacesSource::new(PathBuf::from("/sys"));
        let sysfs = sysfs_names("kvq0");
        let mut rounds = Vec::new();
        for queues in [None, Some("2"), Some("3")] {
            if let Some(q) = queues {
                tool("ethtool", &["-L", "kvq0", "rx", q, "tx", q]);
            }
            let ours = driver_stats(&collect(&mut src), "kvq0", &sysfs);
            rounds.push((ours, exported(&ethtool_s("kvq0"), &sysfs)));
        }
        rounds
    });
    let has_queue = |stats: &[(String, f64)], q: u32| {
        stats
            .iter()
            .any(|(n, _)| n.starts_with(&format!("rx_queue_{q}_")))
    };
    for (i, (ours, ethtool)) in rounds.iter().enumerate() {
        assert_eq!(ours, ethtool, "round {i}");
    }
    assert!(has_queue(&rounds[0].0, 3), "4 queues at first");
    assert!(
        !has_queue(&rounds[1].0, 2) && has_queue(&rounds[1].0, 1),
        "then 2"
    );
    assert!(
        has_queue(&rounds[2].0, 2) && !has_queue(&rounds[2].0, 3),
        "then 3"
    );
}

#[test]
fn driver_statistics_on_the_host_bracket_ethtool() {
    if !require(&[ETHTOOL]) {
        return;
    }
    // The host's interfaces carry other traffic: our reading before ethtool's and after it
    // must enclose ethtool's value.
    let mut src = InterfacesSource::new(PathBuf::from("/sys"));
    let before = collect(&mut src);
    let ifnames: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let ethtool: Vec<(String, Vec<(String, f64)>)> =
        ifnames.iter().map(|i| (i.clone(), ethtool_s(i))).collect();
    let after = collect(&mut src);
    for (ifname, stats) in &ethtool {
        let Ok(sysfs) = std::fs::read_dir(format!("/sys/class/net/{ifname}/statistics")) else {
            continue; // gone meanwhile
        };
        let sysfs: HashSet<String> = sysfs
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let want = exported(stats, &sysfs);
        let (a, b) = (
            driver_stats(&before, ifname, &sysfs),
            driver_stats(&after, ifname, &sysfs),
        );
        let names = |s: &[(String, f64)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&want), "{ifname}");
        assert_eq!(names(&b), names(&want), "{ifname}");
        for (((name, x), (_, y)), (_, z)) in a.iter().zip(&want).zip(&b) {
            assert!(
                x <= y && y <= z,
                "{ifname} {name}: ours {x} .. {z} but ethtool {y}"
            );
        }
    }
}
