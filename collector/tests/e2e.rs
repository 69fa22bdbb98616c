//! End to end, as processes: a collector and a node shipper in a network namespace of the
//! test's own (so that the counters and sockets they see move only with the test's
//! traffic), talking gRPC and HTTP over the namespace's loopback.

mod common;

use common::{query, single_value, workspace_bin};
use kappie_testkit::need::NETNS;
use kappie_testkit::{require, wait_for, Bpffs, Need, Netns, Proc, Tmpfs, Veth};
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

const HTTP: &str = "http://127.0.0.1:19090";

fn start_collector(ns: &Netns, dir: &Path) -> Proc {
    start_collector_with(ns, &dir.join("data"), &dir.join("collector.log"), &[])
}

fn start_collector_with(ns: &Netns, data: &Path, log: &Path, extra: &[&str]) -> Proc {
    let mut cmd = ns.command(Path::new(env!("CARGO_BIN_EXE_kappie-collector")));
    cmd.arg("--data-dir").arg(data).args([
        "--http-listen",
        "127.0.0.1:19090",
        "--grpc-listen",
        "127.0.0.1:19095",
    ]);
    cmd.args(extra);
    let p = Proc::spawn("collector", cmd, log);
    wait_for("collector ready", Duration::from_secs(20), || {
        ns.enter(|| ureq::get(&format!("{HTTP}/-/ready")).call().ok())
    });
    p
}

fn start_shipper(ns: &Netns, dir: &Path, run: usize) -> Proc {
    start_shipper_with(ns, dir, run, &["--disable-sources", "ebpf"])
}

fn start_shipper_with(ns: &Netns, dir: &Path, run: usize, extra: &[&str]) -> Proc {
    let mut cmd = ns.command(&workspace_bin("kappie-shipper"));
    cmd.args(extra);
    cmd.args([
        // A free port (logged as http_listen=): tests run side by side.
        "--http-listen",
        "127.0.0.1:0",
        "--collector",
        "http://127.0.0.1:19095",
        "--interval",
        "300ms",
        "--node-name",
        "e2e-node",
        "--cluster",
        "e2e",
    ])
    .arg("--state-file")
    .arg(dir.join("shipper-state.json"));
    Proc::spawn("shipper", cmd, &dir.join(format!("shipper-{run}.log")))
}

fn value(ns: &Netns, q: &str) -> Option<f64> {
    ns.enter(|| single_value(&query(HTTP, q)))
}

#[test]
fn udp_active_sockets_moves_with_open_sockets() {
    if !require(&NETNS) {
        return;
    }
    let ns = Netns::new("udp");
    let dir = tempfile::tempdir().unwrap();
    let _collector = start_collector(&ns, dir.path());
    // eBPF cannot start (the pin directory is not on a bpffs): one warning, the rest runs.
    let _shipper = start_shipper_with(
        &ns,
        dir.path(),
        0,
        &["--ebpf-pin-dir", "/tmp/kappie-not-a-bpffs"],
    );
    let q = "kappie_udp_active_sockets{node_name=\"e2e-node\",cluster=\"e2e\"}";
    let base = wait_for(
        "kappie_udp_active_sockets to appear",
        Duration::from_secs(20),
        || value(&ns, q),
    );
    let ss_count = |ns: &Netns| ns.output("ss", &["-uanH"]).lines().count() as f64;
    assert_eq!(
        base,
        ss_count(&ns),
        "the gauge equals what ss counts in the namespace"
    );

    const K: usize = 7;
    let sockets: Vec<UdpSocket> = ns.enter(|| {
        (0..K)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect()
    });
    wait_for("the gauge to move by K", Duration::from_secs(20), || {
        (value(&ns, q) == Some(base + K as f64)).then_some(())
    });
    assert_eq!(ss_count(&ns), base + K as f64);
    drop(sockets);
    wait_for("the gauge to come back", Duration::from_secs(20), || {
        (value(&ns, q) == Some(base)).then_some(())
    });
}

fn kernel_noports(ns: &Netns) -> f64 {
    let out = ns.output("nstat", &["-asz", "UdpNoPorts"]);
    out.lines()
        .find_map(|l| l.strip_prefix("UdpNoPorts"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no UdpNoPorts in nstat output {out:?}"))
}

/// Datagrams to a port nobody listens on: each one is counted in Udp NoPorts.
fn send_to_closed_port(ns: &Netns, n: usize) {
    ns.enter(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..n {
            s.send_to(b"kappie", "127.0.0.1:9").unwrap();
        }
    })
}

#[test]
fn sigkilled_shipper_loses_and_doubles_no_counts() {
    if !require(&NETNS) {
        return;
    }
    let ns = Netns::new("kill");
    let dir = tempfile::tempdir().unwrap();
    let _collector = start_collector(&ns, dir.path());
    let q = "kappie_udp_connection_stats{statistic_name=\"NoPorts\",node_name=\"e2e-node\"}";
    let start_kernel = kernel_noports(&ns);
    let mut shipper = start_shipper(&ns, dir.path(), 0);
    let mut sent = 0;
    send_to_closed_port(&ns, 100);
    sent += 100;
    let k = kernel_noports(&ns);
    wait_for(
        "the collector to reach the kernel's count",
        Duration::from_secs(20),
        || (value(&ns, q) == Some(k)).then_some(()),
    );

    for run in 1..=5 {
        send_to_closed_port(&ns, 50);
        // Kill at a different point of the 300 ms cycle each time: mid-push or between.
        std::thread::sleep(Duration::from_millis(70 * run as u64));
        shipper.kill9();
        send_to_closed_port(&ns, 50);
        sent += 100;
        shipper = start_shipper(&ns, dir.path(), run);
    }
    send_to_closed_port(&ns, 25);
    sent += 25;
    let end_kernel = kernel_noports(&ns);
    assert_eq!(
        end_kernel - start_kernel,
        sent as f64,
        "the kernel counted every datagram"
    );
    wait_for(
        "the collector total to equal the kernel's",
        Duration::from_secs(30),
        || (value(&ns, q) == Some(end_kernel)).then_some(()),
    );
    // Several more cycles: nothing is counted twice later on.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(value(&ns, q), Some(end_kernel));
    drop(shipper);
}

/// Issue 16: a damaged state file must not make a restarted shipper send its counters'
/// values since boot again (the collector already holds totals up to its last push): the
/// first collection becomes the baseline, and only what happened between the last push and
/// the restart is lost (logged).
#[test]
fn a_damaged_shipper_state_file_counts_nothing_twice() {
    if !require(&NETNS) {
        return;
    }
    let ns = Netns::new("state");
    let dir = tempfile::tempdir().unwrap();
    let _collector = start_collector(&ns, dir.path());
    let q = "kappie_udp_connection_stats{statistic_name=\"NoPorts\",node_name=\"e2e-node\"}";
    let shipper = start_shipper(&ns, dir.path(), 0);
    send_to_closed_port(&ns, 200);
    let k = kernel_noports(&ns);
    wait_for(
        "the collector to reach the kernel's count",
        Duration::from_secs(20),
        || (value(&ns, q) == Some(k)).then_some(()),
    );
    shipper.kill9();
    std::fs::write(
        dir.path().join("shipper-state.json"),
        b"{\"version\": 1, damaged",
    )
    .unwrap();
    send_to_closed_port(&ns, 50); // between the last push and the restart: lost
    let _shipper = start_shipper(&ns, dir.path(), 1);
    let log = dir.path().join("shipper-1.log");
    wait_for(
        "the shipper to take its baseline",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("counted twice"))
        },
    );
    send_to_closed_port(&ns, 30);
    wait_for(
        "the collector to count the new datagrams",
        Duration::from_secs(20),
        || (value(&ns, q) == Some(k + 30.0)).then_some(()),
    );
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300)); // a shipper cycle
        assert_eq!(value(&ns, q), Some(k + 30.0), "counted twice");
    }
}

#[test]
fn ebpf_forward_totals_survive_a_sigkilled_shipper() {
    if !require(&[NETNS.as_slice(), &[Need::KernelBtf]].concat()) {
        return;
    }
    let client = Netns::new("efc");
    let server = Netns::new("efs");
    let veth = Veth::new(&client, &server, 21);
    veth.quiet(&client, &server);
    let dir = tempfile::tempdir().unwrap();
    let pins = Bpffs::new("e2e-forward");
    let pin_arg = pins.path.join("kappie").to_string_lossy().into_owned();
    let args = [
        "--ebpf-interfaces",
        veth.b_if.as_str(),
        "--ebpf-pin-dir",
        pin_arg.as_str(),
    ];
    let _collector = start_collector(&server, dir.path());
    let mut shipper = start_shipper_with(&server, dir.path(), 0, &args);
    let q = "kappie_forward_count{direction=\"ingress\",node_name=\"e2e-node\"}";
    let first = wait_for(
        "kappie_forward_count to appear",
        Duration::from_secs(30),
        || value(&server, q),
    );
    assert_eq!(first, 0.0, "the link carries nothing before the test sends");
    let rx_packets = || -> u64 {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", veth.b_if);
        server.output("cat", &[&path]).trim().parse().unwrap()
    };
    let rx0 = rx_packets();

    let target = format!("{}:9", veth.b_addr4);
    let send = |n: usize| {
        client.enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..n {
                s.send_to(b"kappie", target.as_str()).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    send(100);
    shipper.kill9(); // SIGKILL: the pinned programs keep counting
    send(100);
    shipper = start_shipper_with(&server, dir.path(), 1, &args);
    send(100);
    let rx1 = rx_packets();
    assert_eq!(
        rx1 - rx0,
        300,
        "the interface received exactly what was sent"
    );
    let mut last = None;
    let ok = (0..100).any(|_| {
        last = value(&server, q);
        std::thread::sleep(Duration::from_millis(200));
        last == Some(300.0)
    });
    if !ok {
        for f in ["shipper-0.log", "shipper-1.log"] {
            eprintln!(
                "--- {f}\n{}",
                std::fs::read_to_string(dir.path().join(f)).unwrap_or_default()
            );
        }
    }
    assert!(ok, "collector total {last:?}, sent 300");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(value(&server, q), Some(300.0), "and stays there");
    // SIGTERM: the shipper detaches its programs (removes its pinned links) and exits.
    let pid = shipper.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = shipper.child.wait().unwrap();
    assert!(status.success(), "shipper exit {status:?}");
    let left: Vec<_> = std::fs::read_dir(&pin_arg)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("link-"))
        .collect();
    assert!(
        left.is_empty(),
        "links still pinned after SIGTERM: {left:?}"
    );
}

/// The port a shipper bound for `--http-listen 127.0.0.1:0`, from its log.
fn shipper_http(log: &Path) -> String {
    wait_for(
        "the shipper to log its HTTP address",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(log).ok()?;
            let at = text.find("http_listen=")? + "http_listen=".len();
            let addr: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            Some(format!("http://{addr}"))
        },
    )
}

/// Status and body of `GET url` from inside `ns`.
fn get_in(ns: &Netns, url: &str) -> Option<(u16, String)> {
    ns.enter(|| match ureq::get(url).call() {
        Ok(r) => Some((r.status(), r.into_string().ok()?)),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().ok()?)),
        Err(_) => None,
    })
}

/// The value of the one sample of `series` (name and labels exactly as served).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Turns on the kernel's BPF run statistics (run_cnt, run_time_ns) while the returned
/// descriptor is open (BPF_ENABLE_STATS; closing it turns them off again, unlike the
/// `kernel.bpf_stats_enabled` sysctl, which a test would have to restore).
fn enable_bpf_stats() -> std::os::fd::OwnedFd {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr = [0u64; 16]; // type: BPF_STATS_RUN_TIME (0)
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_ENABLE_STATS: {}",
        std::io::Error::last_os_error()
    );
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

#[test]
fn shipper_serves_its_metrics_health_and_readiness() {
    if !require(&[NETNS.as_slice(), &[Need::KernelBtf]].concat()) {
        return;
    }
    let client = Netns::new("hc");
    let server = Netns::new("hs");
    let veth = Veth::new(&client, &server, 22);
    veth.quiet(&client, &server);
    let dir = tempfile::tempdir().unwrap();
    let pins = Bpffs::new("e2e-http");
    let pin_arg = pins.path.join("kappie").to_string_lossy().into_owned();
    let _stats = enable_bpf_stats();
    // The shipper first: no collector, so nothing can be acknowledged yet.
    let args = [
        "--ebpf-interfaces",
        veth.b_if.as_str(),
        "--ebpf-pin-dir",
        pin_arg.as_str(),
        "--ebpf-required",
    ];
    let mut shipper = start_shipper_with(&server, dir.path(), 0, &args);
    let log = dir.path().join("shipper-0.log");
    let http = shipper_http(&log);
    wait_for("the shipper to be healthy", Duration::from_secs(30), || {
        get_in(&server, &format!("{http}/-/healthy")).filter(|(s, _)| *s == 200)
    });
    let failed = "kappie_shipper_pushes_total{result=\"failed\"}";
    wait_for("a failed push", Duration::from_secs(30), || {
        let (_, m) = get_in(&server, &format!("{http}/metrics"))?;
        (sample(&m, failed)? >= 1.0).then_some(())
    });
    let (status, body) = get_in(&server, &format!("{http}/-/ready")).unwrap();
    assert_eq!(
        status, 503,
        "not ready before the first acknowledgement: {body}"
    );

    let _collector = start_collector(&server, dir.path());
    wait_for("the shipper to be ready", Duration::from_secs(30), || {
        get_in(&server, &format!("{http}/-/ready")).filter(|(s, _)| *s == 200)
    });

    const N: u64 = 40;
    let target = format!("{}:9", veth.b_addr4);
    client.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..N {
            s.send_to(b"kappie", target.as_str()).unwrap();
        }
    });
    let runs = |p: &str| format!("kappie_shipper_ebpf_program_runs_total{{program=\"{p}\"}}");
    let m = wait_for(
        "the programs' runs to reach the datagrams sent",
        Duration::from_secs(30),
        || {
            let (_, m) = get_in(&server, &format!("{http}/metrics"))?;
            let ingress = sample(&m, &runs("kappie_tc_ingress"))?;
            // Every datagram is dropped (NO_SOCKET), among whatever else the host drops.
            let drops = sample(&m, &runs("kappie_kfree_skb"))?;
            (ingress >= N as f64 && drops >= N as f64).then_some(m)
        },
    );
    for family in [
        "kappie_shipper_info",
        "kappie_shipper_collections_total",
        "kappie_shipper_last_collection_timestamp_seconds",
        "kappie_shipper_last_collection_duration_seconds",
        "kappie_shipper_collection_duration_seconds_total",
        "kappie_shipper_series",
        "kappie_shipper_collection_errors_total",
        "kappie_shipper_queue_batches",
        "kappie_shipper_queue_bytes",
        "kappie_shipper_pushes_total",
        "kappie_shipper_last_acknowledged_sequence",
        "kappie_shipper_last_successful_push_timestamp_seconds",
        "kappie_shipper_ebpf_program_attached",
        "kappie_shipper_ebpf_program_runs_total",
        "kappie_shipper_ebpf_program_run_seconds_total",
    ] {
        assert!(
            m.contains(&format!("# HELP {family} ")),
            "{family} HELP\n{m}"
        );
        assert!(
            m.contains(&format!("# TYPE {family} ")),
            "{family} TYPE\n{m}"
        );
    }
    let v = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("{series}\n{m}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        v("kappie_shipper_info{version=\"0.1.0\",node_name=\"e2e-node\",cluster=\"e2e\"}"),
        1.0
    );
    assert!(v("kappie_shipper_collections_total") >= 1.0);
    assert!((v("kappie_shipper_last_collection_timestamp_seconds") - now).abs() < 60.0);
    for source in ["netstat", "sockets", "interfaces", "ebpf"] {
        let l = format!("{{source=\"{source}\"}}");
        assert!(
            v(&format!("kappie_shipper_series{l}")) > 0.0,
            "{source} series"
        );
        let last = v(&format!(
            "kappie_shipper_last_collection_duration_seconds{l}"
        ));
        let total = v(&format!(
            "kappie_shipper_collection_duration_seconds_total{l}"
        ));
        assert!(
            last > 0.0 && last < 10.0 && total >= last,
            "{source} durations"
        );
        assert_eq!(
            v(&format!("kappie_shipper_collection_errors_total{l}")),
            0.0
        );
    }
    assert!(v("kappie_shipper_queue_batches") >= 0.0);
    assert!(v("kappie_shipper_queue_bytes") >= 0.0);
    assert!(v("kappie_shipper_pushes_total{result=\"ok\"}") >= 1.0);
    assert_eq!(v("kappie_shipper_pushes_total{result=\"rejected\"}"), 0.0);
    assert!(
        v(failed) >= 1.0,
        "the pushes before the collector started failed"
    );
    assert!(v("kappie_shipper_last_acknowledged_sequence") >= 1.0);
    assert!((v("kappie_shipper_last_successful_push_timestamp_seconds") - now).abs() < 60.0);
    for (program, interface, hook) in [
        ("kappie_tc_ingress", veth.b_if.as_str(), "tcx"),
        ("kappie_tc_egress", veth.b_if.as_str(), "tcx"),
        ("kappie_kfree_skb", "", "tp_btf"),
    ] {
        let s = format!(
            "kappie_shipper_ebpf_program_attached{{program=\"{program}\",interface=\"{interface}\",hook=\"{hook}\"}}"
        );
        assert_eq!(v(&s), 1.0, "{s}");
    }
    assert!(
        v("kappie_shipper_ebpf_program_run_seconds_total{program=\"kappie_tc_ingress\"}") > 0.0
    );

    // SIGTERM: the shipper stops, and its endpoints with it.
    let pid = shipper.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(shipper.child.wait().unwrap().success());
    assert!(get_in(&server, &format!("{http}/-/healthy")).is_none());
    let text = std::fs::read(&log).unwrap();
    assert!(!text.contains(&0x1b), "colour codes in the log file");
}

/// The collector's own counter `name` (no labels) from its /metrics.
fn collector_counter(ns: &Netns, name: &str) -> f64 {
    let (_, text) = get_in(ns, &format!("{HTTP}/metrics")).expect("collector /metrics");
    sample(&text, name).unwrap_or_else(|| panic!("no {name} in the collector's /metrics"))
}

/// Issue 16, per-shipper rate limits: a shipper that sends faster than
/// `--max-samples-per-shipper-per-second` (here: a queue of batches built while the collector
/// was down, sent back to back) is refused with RESOURCE_EXHAUSTED and a time to wait; it
/// waits and sends the same batches again, so every count arrives, once, and none is dropped.
#[test]
fn a_rate_limited_shipper_waits_and_loses_no_counts() {
    if !require(&NETNS) {
        return;
    }
    let ns = Netns::new("rate");
    let dir = tempfile::tempdir().unwrap();
    let q = "kappie_udp_connection_stats{statistic_name=\"NoPorts\",node_name=\"e2e-node\"}";
    // The collector is not there yet: batches queue up at the shipper.
    let shipper = start_shipper(&ns, dir.path(), 0);
    let shipper_url = shipper_http(&dir.path().join("shipper-0.log"));
    let queued = |ns: &Netns| {
        let (_, text) = get_in(ns, &format!("{shipper_url}/metrics"))?;
        sample(&text, "kappie_shipper_queue_batches")
    };
    send_to_closed_port(&ns, 120);
    wait_for(
        "10 batches queued at the shipper",
        Duration::from_secs(30),
        || (queued(&ns)? >= 10.0).then_some(()),
    );
    // Each batch costs the whole bucket of 10 samples; 50 a second refill it in 0.2 s, so the
    // queue drains at 5 batches a second (the shipper adds 3.3).
    let _collector = start_collector_with(
        &ns,
        &dir.path().join("data"),
        &dir.path().join("collector.log"),
        &[
            "--max-samples-per-shipper-per-second",
            "50",
            "--shipper-burst-samples",
            "10",
        ],
    );
    send_to_closed_port(&ns, 25);
    let k = kernel_noports(&ns);
    wait_for(
        "the collector total to equal the kernel's",
        Duration::from_secs(60),
        || (value(&ns, q) == Some(k)).then_some(()),
    );
    let refused = collector_counter(&ns, "kappie_ingest_refused_rate_limited_total");
    assert!(
        refused > 0.0,
        "no push was rate limited; the test tests nothing"
    );
    let (_, text) = get_in(&ns, &format!("{shipper_url}/metrics")).unwrap();
    assert_eq!(
        sample(&text, "kappie_shipper_pushes_total{result=\"rejected\"}"),
        Some(0.0),
        "a rate-limited batch was dropped"
    );
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    assert!(
        log.contains("over its rate limit"),
        "the collector logs the refusal"
    );
    eprintln!("{refused} pushes refused by the rate limit; total {k} exact");
    drop(shipper);
}

/// Issue 16, a full disk under gRPC ingest: the collector's store on a small tmpfs is filled
/// (by remote write, which is faster at it); the real shipper's pushes are then refused with
/// UNAVAILABLE, the shipper keeps its deltas and retries, and once space returns (and the
/// collector restarted, if its health check asks for it) the collector's total equals the
/// kernel's exactly: nothing lost, nothing counted twice.
#[test]
fn a_full_disk_under_grpc_ingest_loses_no_shipper_counts() {
    if !require(&[
        NETNS[0],
        NETNS[1],
        NETNS[2],
        Need::Tool {
            program: "mount",
            package: "mount",
        },
    ]) {
        return;
    }
    use kappie_testkit::prometheus::{remote_write, series};
    let ns = Netns::new("full");
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs");
    let tmpfs = Tmpfs::mount(&fs, "12m");
    let data = fs.join("data");
    let args = [
        "--wal-segment-bytes",
        "1048576",
        "--maintenance-interval-seconds",
        "1",
    ];
    let collector = start_collector_with(&ns, &data, &dir.path().join("collector-0.log"), &args);
    let q = "kappie_udp_connection_stats{statistic_name=\"NoPorts\",node_name=\"e2e-node\"}";
    let shipper = start_shipper(&ns, dir.path(), 0);
    let shipper_url = shipper_http(&dir.path().join("shipper-0.log"));
    send_to_closed_port(&ns, 100);
    let k = kernel_noports(&ns);
    wait_for(
        "the collector to reach the kernel's count",
        Duration::from_secs(30),
        || (value(&ns, q) == Some(k)).then_some(()),
    );

    // Fill the disk: random floats (nothing to compress), then single samples, until even
    // those are refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut refused = 0;
    let mut attempts = 0;
    let fill = |n: i64, points: usize| -> bool {
        let batch: Vec<_> = (0..if points > 1 { 100 } else { 1 })
            .map(|s| {
                let pts: Vec<(i64, f64)> = (0..points as i64)
                    .map(|i| {
                        (
                            now - 3_600_000 + n * 1000 + i,
                            f64::from_bits(rand::random::<u64>() >> 2),
                        )
                    })
                    .collect();
                series(&[("__name__", "fill"), ("s", &format!("s{s}"))], &pts)
            })
            .collect();
        ns.enter(|| remote_write(&format!("{HTTP}/api/v1/write"), batch).is_ok())
    };
    while refused < 5 {
        attempts += 1;
        assert!(attempts < 3_000, "the disk never filled up");
        if !fill(attempts, 20) {
            refused += 1;
        }
    }
    refused = 0;
    while refused < 5 {
        attempts += 1;
        assert!(attempts < 6_000, "the disk never filled up");
        if !fill(attempts, 1) {
            refused += 1;
        }
    }
    let failed = |ns: &Netns| {
        let (_, text) = get_in(ns, &format!("{shipper_url}/metrics"))?;
        sample(&text, "kappie_shipper_pushes_total{result=\"failed\"}")
    };
    let failed_before = failed(&ns).unwrap();
    send_to_closed_port(&ns, 100);
    wait_for(
        "the shipper's pushes to be refused for the full disk",
        Duration::from_secs(30),
        || (failed(&ns)? >= failed_before + 2.0).then_some(()),
    );
    let k = kernel_noports(&ns);
    assert!(
        value(&ns, q).unwrap() < k,
        "the last 100 datagrams cannot be stored yet"
    );
    let log = std::fs::read_to_string(dir.path().join("shipper-0.log")).unwrap();
    assert!(
        log.contains("store unavailable") && log.contains("retry later"),
        "the shipper logs the collector's reason"
    );

    // Space returns.
    tmpfs.resize("512m");
    let healthy = ns.enter(|| ureq::get(&format!("{HTTP}/-/healthy")).call().is_ok());
    let _collector = if healthy {
        collector
    } else {
        // A failed fsync stops the store; the liveness probe would restart it.
        collector.kill9();
        start_collector_with(&ns, &data, &dir.path().join("collector-1.log"), &args)
    };
    eprintln!("after space returned the collector was healthy: {healthy}");
    send_to_closed_port(&ns, 25);
    let k = kernel_noports(&ns);
    wait_for(
        "the collector total to equal the kernel's after space returned",
        Duration::from_secs(60),
        || (value(&ns, q) == Some(k)).then_some(()),
    );
    let (_, text) = get_in(&ns, &format!("{shipper_url}/metrics")).unwrap();
    assert_eq!(
        sample(&text, "kappie_shipper_pushes_total{result=\"rejected\"}"),
        Some(0.0),
        "a batch was dropped"
    );
    // Several more cycles: nothing is counted twice later on.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(value(&ns, q), Some(k));
    drop(shipper);
}
