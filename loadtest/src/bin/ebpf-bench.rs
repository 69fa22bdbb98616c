//! Benchmark: what Kappie's eBPF programs cost the traffic they count.
//!
//! iperf3 TCP throughput over a veth pair between two network namespaces this benchmark
//! makes, with Kappie's programs (tc ingress and egress on the server end, and the global
//! `tp_btf/kfree_skb`) attached and not attached, alternating round by round in the same
//! run; then the per-packet cost of each program from the kernel's BPF run-time statistics
//! (`kernel.bpf_stats_enabled=1`) over the attached rounds.
//!
//! Needs root and iperf3 (`apt-get install iperf3`).

use anyhow::{bail, Context};
use clap::Parser;
use kappie_node_shipper::sources::ebpf::{EbpfConfig, EbpfSource};
use kappie_testkit::{Netns, Proc, Veth};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Rounds of each kind (attached, not attached), alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
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
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/kappie-bench-{}", std::process::id()));
    let config = EbpfConfig {
        drops_tracepoint: false,
        interfaces: vec![veth.b_if.clone()],
        pin_dir: pin_dir.clone(),
        drops: true,
        forward: true,
        tcx_only: false,
    };

    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut stats: HashMap<String, (Duration, u64)> = HashMap::new();
    iperf(&client, &addr, 1)?; // warm-up
    for round in 0..args.rounds {
        let bps = iperf(&client, &addr, args.seconds)?;
        without.push(bps);
        let src = server
            .enter(|| EbpfSource::start(&config))
            .context("attach Kappie's programs")?;
        let bps = iperf(&client, &addr, args.seconds)?;
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
    iperf(&client, &addr, args.seconds)?;
    for (name, t, n) in src.program_stats() {
        let e = stats.entry(name).or_default();
        e.0 += t;
        e.1 += n;
    }
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
    Ok(())
}
