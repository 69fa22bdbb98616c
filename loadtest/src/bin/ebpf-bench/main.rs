//! Benchmark: what Kappie's eBPF programs cost the traffic they count.
//!
//! iperf3 TCP throughput over a veth pair between two network namespaces this benchmark
//! makes, with Kappie's programs (tc ingress and egress on the server end, and the global
//! `tp_btf/kfree_skb`) attached and not attached, alternating round by round in the same
//! run; then the per-packet cost of each program from the kernel's BPF run-time statistics
//! (`kernel.bpf_stats_enabled=1`) over the attached rounds.
//!
//! Then (unless `--skip-storm`) a drop storm: UDP sent as fast as one thread can (`sendmmsg`,
//! 64 datagrams of 18 bytes per call) from one namespace to a second one that drops every
//! datagram, either in an nftables rule (`--storm-target nft`, reason `NETFILTER_DROP`) or at a
//! closed port (`closed-port`, reason `NO_SOCKET`). The veth pair carries nothing else (static
//! neighbours, IPv6 off), so the receiving end's `rx_packets` is the number of drops. The CPU
//! per million drops is the sending thread's CPU time (the veth receive path and the drop run
//! in its softirq context; the kernel here has no IRQ time accounting, so that time is the
//! thread's) plus what the `ksoftirqd` threads used in the same window, over the drops.
//! Rounds alternate without and with the programs (tc on the dropping end and
//! `tp_btf/kfree_skb`); one more attached round with `kernel.bpf_stats_enabled=1` gives the
//! ns per run and checks that Kappie counted exactly the drops the interface saw.
//!
//! Then, in the same iperf3 and storm setups (unless `--floor-rounds 0`), the live floor of the
//! tc hook: reference programs (empty; map lookup and adds only) and Kappie's tc programs
//! attached one at a time, interleaved, with bpf_stats on (`floor.rs`). `--only-floor` skips
//! the throughput and CPU rounds before it.
//!
//! Needs root, iperf3 (`apt-get install iperf3`) and, for `--storm-target nft`, nft.

use anyhow::{bail, Context};
use clap::Parser;
use kappie_node_shipper::sources::ebpf::{EbpfConfig, EbpfSource};
use kappie_testkit::{Netns, Proc, Veth};
use std::collections::HashMap;
use std::time::Duration;

mod floor;

#[derive(Parser)]
struct Args {
    /// Rounds of each kind (attached, not attached), alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Skip the iperf3 throughput rounds.
    #[arg(long)]
    skip_iperf: bool,
    /// Skip the drop storm.
    #[arg(long)]
    skip_storm: bool,
    /// Drop-storm rounds of each kind (attached, not attached), alternating.
    #[arg(long, default_value_t = 5)]
    storm_rounds: usize,
    /// Seconds per drop-storm round.
    #[arg(long, default_value_t = 3.0)]
    storm_seconds: f64,
    /// Where the storm's datagrams die: `nft` (a drop rule) or `closed-port`.
    #[arg(long, default_value = "nft")]
    storm_target: String,
    /// Rounds of the tc floor comparison in each setup (0: none).
    #[arg(long, default_value_t = 5)]
    floor_rounds: usize,
    /// Other forward objects (e.g. `git show main:ebpf/forward.bpf.o`) whose tc programs
    /// join the floor comparison; repeatable.
    #[arg(long)]
    compare_object: Vec<std::path::PathBuf>,
    /// Only the floor comparison: skip the attached / not attached rounds.
    #[arg(long)]
    only_floor: bool,
}

fn iperf(client: &Netns, server_addr: &str, seconds: u32) -> anyhow::Result<f64> {
    let out = client.output(
        "iperf3",
        &["-c", server_addr, "-t", &seconds.to_string(), "-J"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no sum_received in iperf3 output")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root");
    }
    println!("load average at the start: {}", loadavg());
    if !args.skip_iperf {
        throughput(&args)?;
    }
    if !args.skip_storm {
        drop_storm(&args)?;
    }
    println!("load average at the end: {}", loadavg());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn print_stats(stats: &HashMap<String, (Duration, u64)>) {
    let mut names: Vec<_> = stats.keys().cloned().collect();
    names.sort();
    for n in names {
        let (t, c) = stats[&n];
        if c > 0 {
            println!(
                "| {n}: run time per invocation ({c} runs) | {:.1} ns |",
                t.as_nanos() as f64 / c as f64
            );
        }
    }
}

fn add_stats(stats: &mut HashMap<String, (Duration, u64)>, src: &EbpfSource) {
    for (name, t, n) in src.program_stats() {
        let e = stats.entry(name).or_default();
        e.0 += t;
        e.1 += n;
    }
}

fn throughput(args: &Args) -> anyhow::Result<()> {
    let client = Netns::new("ipc");
    let server = Netns::new("ips");
    let veth = Veth::new(&client, &server, 31);
    let addr = veth.b_addr4.to_string();
    let log = std::env::temp_dir().join(format!("kappie-iperf3-{}.log", std::process::id()));
    let _iperf_server = Proc::spawn(
        "iperf3 -s",
        {
            let mut c = server.command(std::path::Path::new("iperf3"));
            c.arg("-s");
            c
        },
        &log,
    );
    std::thread::sleep(Duration::from_millis(500));
    iperf(&client, &addr, 1)?; // warm-up
    if !args.only_floor {
        throughput_rounds(args, &client, &server, &veth, &addr)?;
    }
    if args.floor_rounds > 0 {
        let mut variants = floor::variants("iperf", &args.compare_object)?;
        let ifindex = ifindex(&server, &veth.b_if)?;
        floor::rounds(
            &format!("iperf3 TCP, {} s rounds", args.seconds),
            &mut variants,
            args.floor_rounds,
            &server,
            &veth.b_if,
            ifindex,
            || {
                let bps = iperf(&client, &addr, args.seconds)?;
                Ok(floor::Work {
                    rx_packets: None,
                    note: format!("{:.2} Gbit/s", bps / 1e9),
                })
            },
        )?;
    }
    Ok(())
}

/// The interface index of `ifname` in `ns`.
fn ifindex(ns: &Netns, ifname: &str) -> anyhow::Result<u32> {
    ns.output("cat", &[&format!("/sys/class/net/{ifname}/ifindex")])
        .trim()
        .parse()
        .context("ifindex")
}

/// iperf3 rounds alternately without and with Kappie's programs, then one with bpf_stats.
fn throughput_rounds(
    args: &Args,
    client: &Netns,
    server: &Netns,
    veth: &Veth,
    addr: &str,
) -> anyhow::Result<()> {
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/kappie-bench-{}", std::process::id()));
    let config = bench_config(veth, &pin_dir);

    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut stats: HashMap<String, (Duration, u64)> = HashMap::new();
    for round in 0..args.rounds {
        let bps = iperf(client, addr, args.seconds)?;
        without.push(bps);
        let src = server
            .enter(|| EbpfSource::start(&config))
            .context("attach Kappie's programs")?;
        let bps = iperf(client, addr, args.seconds)?;
        with.push(bps);
        src.detach();
        let _ = std::fs::remove_dir_all(&pin_dir);
        eprintln!(
            "round {round}: without {:.2} Gbit/s, with {:.2} Gbit/s",
            without[round] / 1e9,
            bps / 1e9
        );
    }
    // Per-packet cost in a run of its own: the statistics add two clock reads per run,
    // which would slow the attached throughput rounds.
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enable kernel.bpf_stats_enabled")?;
    let src = server
        .enter(|| EbpfSource::start(&config))
        .context("attach Kappie's programs")?;
    iperf(client, addr, args.seconds)?;
    add_stats(&mut stats, &src);
    src.detach();
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let (w, wo) = (median(with), median(without));
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| iperf3 TCP, programs not attached (median of {}) | {:.2} Gbit/s |",
        args.rounds,
        wo / 1e9
    );
    println!(
        "| iperf3 TCP, programs attached (median of {}) | {:.2} Gbit/s |",
        args.rounds,
        w / 1e9
    );
    println!("| attached / not attached | {:.1} % |", w / wo * 100.0);
    print_stats(&stats);
    Ok(())
}

/// CPU time (user and system) of every `ksoftirqd` thread, in ns (clock ticks from
/// /proc/PID/stat, so 1/CLK_TCK resolution).
fn ksoftirqd_cpu_ns() -> u64 {
    let tick_ns = 1e9 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("ksoftirqd/") {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            // Fields after the ")" that ends the command name: state is the 1st, utime 12th.
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (ticks as f64 * tick_ns) as u64
}

/// Sends 18-byte UDP datagrams to `target` as fast as this thread can for `seconds`, 64 per
/// `sendmmsg`; returns this thread's CPU time in ns.
fn flood(target: std::net::SocketAddrV4, seconds: f64) -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(target)?;
    const BATCH: usize = 64;
    let payload = [7u8; 18];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    let t0 = kappie_loadtest::thread_cpu_ns();
    while std::time::Instant::now() < deadline {
        // SAFETY: msgs and the iovecs and payload they point to outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A closed port answers with ICMP port unreachable, which a connected UDP
            // socket reports on a later send; the storm goes on.
            if e.raw_os_error() != Some(libc::ECONNREFUSED) {
                return Err(e).context("sendmmsg");
            }
        }
    }
    Ok(kappie_loadtest::thread_cpu_ns() - t0)
}

/// One storm: drops seen by the dropping end, CPU ns spent (sender and ksoftirqd).
fn storm_round(
    client: &Netns,
    server: &Netns,
    ifname: &str,
    target: std::net::SocketAddrV4,
    seconds: f64,
) -> anyhow::Result<(u64, u64)> {
    let rx = || -> anyhow::Result<u64> {
        server
            .output(
                "cat",
                &[&format!("/sys/class/net/{ifname}/statistics/rx_packets")],
            )
            .trim()
            .parse()
            .context("rx_packets")
    };
    let rx0 = rx()?;
    let k0 = ksoftirqd_cpu_ns();
    let cpu = client.enter(|| flood(target, seconds))?;
    let k1 = ksoftirqd_cpu_ns();
    Ok((rx()? - rx0, cpu + (k1 - k0)))
}

fn drop_storm(args: &Args) -> anyhow::Result<()> {
    let client = Netns::new("dsc");
    let server = Netns::new("dss");
    let veth = Veth::new(&client, &server, 32);
    veth.quiet(&client, &server);
    let port = 7777;
    let reason_name = match args.storm_target.as_str() {
        "nft" => {
            for cmd in [
                "add table inet kappie_storm",
                "add chain inet kappie_storm input { type filter hook input priority 0 ; }",
                "add rule inet kappie_storm input udp dport 7777 drop",
            ] {
                server.output("nft", &cmd.split(' ').collect::<Vec<_>>());
            }
            "NETFILTER_DROP"
        }
        "closed-port" => "NO_SOCKET",
        t => bail!("--storm-target {t}: nft or closed-port"),
    };
    let target = std::net::SocketAddrV4::new(veth.b_addr4, port);
    let netns = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(format!(
        "/var/run/netns/{}",
        server.name
    ))?) as u32;
    storm_round(&client, &server, &veth.b_if, target, 1.0)?; // warm-up
    if !args.only_floor {
        storm_rounds(args, &client, &server, &veth, target, netns, reason_name)?;
    }
    if args.floor_rounds > 0 {
        let mut variants = floor::variants("storm", &args.compare_object)?;
        let ifindex = ifindex(&server, &veth.b_if)?;
        floor::rounds(
            &format!(
                "drop storm into {} ({reason_name}), {} s rounds",
                args.storm_target, args.storm_seconds
            ),
            &mut variants,
            args.floor_rounds,
            &server,
            &veth.b_if,
            ifindex,
            || {
                let (drops, _) =
                    storm_round(&client, &server, &veth.b_if, target, args.storm_seconds)?;
                Ok(floor::Work {
                    rx_packets: Some(drops),
                    note: format!("{:.0} drops/s", drops as f64 / args.storm_seconds),
                })
            },
        )?;
    }
    Ok(())
}

/// Storm rounds alternately without and with Kappie's programs, then one with bpf_stats
/// that checks Kappie's drop count.
fn storm_rounds(
    args: &Args,
    client: &Netns,
    server: &Netns,
    veth: &Veth,
    target: std::net::SocketAddrV4,
    netns: u32,
    reason_name: &str,
) -> anyhow::Result<()> {
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/kappie-storm-{}", std::process::id()));
    let config = bench_config(veth, &pin_dir);
    // ms of CPU per million drops, and drops per second, of each round.
    let per_million = |(drops, cpu): (u64, u64)| cpu as f64 / 1e6 / (drops as f64 / 1e6);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut rate_with, mut rate_without) = (Vec::new(), Vec::new());
    for round in 0..args.storm_rounds {
        let r = storm_round(client, server, &veth.b_if, target, args.storm_seconds)?;
        without.push(per_million(r));
        rate_without.push(r.0 as f64 / args.storm_seconds);
        let src = server
            .enter(|| EbpfSource::start(&config))
            .context("attach Kappie's programs")?;
        let r = storm_round(client, server, &veth.b_if, target, args.storm_seconds)?;
        with.push(per_million(r));
        rate_with.push(r.0 as f64 / args.storm_seconds);
        src.detach();
        let _ = std::fs::remove_dir_all(&pin_dir);
        eprintln!(
            "storm round {round}: without {:.1} ms CPU per million drops ({:.0}/s), with {:.1} ({:.0}/s); load {}",
            without[round],
            rate_without[round],
            with[round],
            rate_with[round],
            loadavg()
        );
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enable kernel.bpf_stats_enabled")?;
    let src = server
        .enter(|| EbpfSource::start(&config))
        .context("attach Kappie's programs")?;
    let reason = (0..1024u32)
        .find(|r| src.reason_name(*r) == reason_name)
        .with_context(|| format!("no drop reason {reason_name} in this kernel"))?;
    let counted = |s: &kappie_node_shipper::sources::ebpf::Snapshot| -> u64 {
        s.drops
            .iter()
            .filter(|(k, _)| k.netns == netns && k.reason == reason)
            .map(|(_, c)| c.packets)
            .sum()
    };
    let before = counted(&src.snapshot()?);
    let (drops, _) = storm_round(client, server, &veth.b_if, target, args.storm_seconds)?;
    let after = counted(&src.snapshot()?);
    let mut stats = HashMap::new();
    add_stats(&mut stats, &src);
    src.detach();
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    println!();
    println!(
        "| drop storm into {} ({reason_name}), {} s rounds | value |",
        args.storm_target, args.storm_seconds
    );
    println!("|---|---|");
    println!(
        "| CPU per million drops, programs not attached (median of {}) | {:.1} ms |",
        args.storm_rounds,
        median(without)
    );
    println!(
        "| CPU per million drops, programs attached (median of {}) | {:.1} ms |",
        args.storm_rounds,
        median(with)
    );
    println!(
        "| drops per second, not attached / attached (medians) | {:.0} / {:.0} |",
        median(rate_without),
        median(rate_with)
    );
    println!(
        "| bpf_stats round: drops at the interface / counted by Kappie ({reason_name}, its netns) | {drops} / {} |",
        after - before
    );
    print_stats(&stats);
    Ok(())
}

/// The shipper's eBPF source as the benchmark attaches it: forward and drop counting on the
/// dropping end of the veth pair, `tp_btf` for drops, pins under `pin_dir`.
fn bench_config(veth: &Veth, pin_dir: &std::path::Path) -> EbpfConfig {
    EbpfConfig {
        drops_tracepoint: false,
        interfaces: vec![veth.b_if.clone()],
        pin_dir: pin_dir.to_owned(),
        drops: true,
        forward: true,
        tcx_only: false,
    }
}
