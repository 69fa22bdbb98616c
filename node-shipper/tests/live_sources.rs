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
use kappie_node_shipper::sources::sockets::SocketsSource;
use kappie_testkit::need::{IPROUTE2, NETNS, PROCPS};
use kappie_testkit::{require, with_unmounted, Need, Netns, Veth};
use std::collections::{HashMap, HashSet};
use std::net::{TcpListener, TcpStream, UdpSocket};
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

#[test]
fn sockets_match_ss_on_the_host() {
    if !require(&[IPROUTE2]) {
        return;
    }
    // The host's sockets churn a little while the test runs (other tests, the package
    // manager), so allow a small difference here; the namespace test below is exact.
    let mut src = SocketsSource::new(PathBuf::from("/proc"), 100);
    let ours = collect(&mut src);
    let ss_tcp = tool("ss", &["-tanH"]);
    let ss_udp = tool("ss", &["-uanH"]).lines().count() as f64;
    let mut counts: HashMap<&str, f64> = HashMap::new();
    for l in ss_tcp.lines() {
        *counts
            .entry(ss_state(l.split_whitespace().next().unwrap()))
            .or_default() += 1.0;
    }
    for o in ours.iter().filter(|o| o.metric == "kappie_tcp_state") {
        let theirs = counts.get(label(o, "state")).copied().unwrap_or(0.0);
        assert!(
            (o.value - theirs).abs() <= 5.0,
            "state {}: ours {} ss {theirs}",
            label(o, "state"),
            o.value
        );
    }
    let udp = ours
        .iter()
        .find(|o| o.metric == "kappie_udp_active_sockets")
        .unwrap()
        .value;
    assert!(
        (udp - ss_udp).abs() <= 3.0,
        "udp sockets: ours {udp} ss {ss_udp}"
    );
}

#[test]
fn sockets_match_ss_exactly_in_a_namespace() {
    if !require(&NETNS) {
        return;
    }
    let client = Netns::new("sockc");
    let server = Netns::new("socks");
    let veth = Veth::new(&client, &server, 7);
    // Servers on two ports per family in `server`; from `client` 3 connections to the
    // first port and 1 to the second, per family; one UDP socket per family.
    let (b4, b6) = (veth.b_addr4, veth.b_addr6);
    let listeners: Vec<TcpListener> = server.enter(|| {
        [
            format!("{b4}:8080"),
            format!("{b4}:8081"),
            format!("[{b6}]:8080"),
            format!("[{b6}]:8081"),
        ]
        .iter()
        .map(|a| TcpListener::bind(a.as_str()).unwrap())
        .collect()
    });
    let (conns, udp, ours) = client.enter(|| {
        let mut conns = Vec::new();
        for host in [b4.to_string(), format!("[{b6}]")] {
            for port in [8080, 8080, 8080, 8081] {
                conns.push(TcpStream::connect(format!("{host}:{port}")).unwrap());
            }
        }
        let udp = [
            UdpSocket::bind("0.0.0.0:0").unwrap(),
            UdpSocket::bind("[::]:0").unwrap(),
        ];
        // /proc/thread-self/net is this thread's namespace.
        let mut src = SocketsSource::new(PathBuf::from("/proc/thread-self"), 2);
        (conns, udp, collect(&mut src))
    });
    let ss_tcp = client.output("ss", &["-tanH"]);
    let ss_udp = client.output("ss", &["-uanH"]).lines().count() as f64;

    let state = |s: &str| {
        ours.iter()
            .find(|o| o.metric == "kappie_tcp_state" && label(o, "state") == s)
            .unwrap()
            .value
    };
    assert_eq!(
        state("ESTABLISHED"),
        ss_tcp.lines().filter(|l| l.starts_with("ESTAB")).count() as f64
    );
    assert_eq!(state("ESTABLISHED"), 8.0);
    assert_eq!(
        ours.iter()
            .filter(|o| o.metric == "kappie_tcp_state")
            .count(),
        11,
        "every state, zeros included"
    );
    let udp_gauge = ours
        .iter()
        .find(|o| o.metric == "kappie_udp_active_sockets")
        .unwrap()
        .value;
    assert_eq!(udp_gauge, ss_udp);
    assert_eq!(udp_gauge, 2.0);

    // Top 2 remotes by count from ss's peer column, then the rest as "other".
    let mut peers: HashMap<String, f64> = HashMap::new();
    for l in ss_tcp.lines() {
        let peer = l.split_whitespace().nth(4).unwrap();
        *peers.entry(peer.to_owned()).or_default() += 1.0;
    }
    let remote = |addr: &str, port: &str| {
        ours.iter()
            .find(|o| {
                o.metric == "kappie_tcp_connection_remote"
                    && label(o, "address") == addr
                    && label(o, "port") == port
            })
            .map(|o| o.value)
    };
    assert_eq!(remote(&b4.to_string(), "8080"), Some(3.0));
    assert_eq!(
        remote(&b4.to_string(), "8080"),
        peers.get(&format!("{b4}:8080")).copied()
    );
    assert_eq!(remote(&b6.to_string(), "8080"), Some(3.0));
    assert_eq!(
        remote(&b6.to_string(), "8080"),
        peers.get(&format!("[{b6}]:8080")).copied()
    );
    assert_eq!(
        remote("other", ""),
        Some(2.0),
        "the two :8081 connections are past the top 2"
    );
    assert_eq!(
        ours.iter()
            .filter(|o| o.metric == "kappie_tcp_connection_remote")
            .count(),
        3
    );
    drop((conns, udp, listeners));
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
