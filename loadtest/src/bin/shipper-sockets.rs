//! Benchmark: the node shipper's collection cycle on a node with many TCP sockets.
//!
//! Makes two network namespaces joined by a veth pair, opens `--sockets` TCP connections from
//! the client namespace to listeners in the server namespace (spread over `--ports` ports,
//! so `kappie_tcp_connection_remote` has real remotes), then
//! 1. runs the utility sources' collection `--cycles` times on a thread inside the client
//!    namespace and reports the CPU time of one cycle (getrusage RUSAGE_THREAD);
//! 2. runs the release `kappie-shipper` and `kappie-collector` processes in the client
//!    namespace for `--process-cycles` intervals of 1 s and reports the shipper's RSS and
//!    CPU time per cycle from /proc.
//!
//! Needs root. Build first: `cargo build --release --workspace`.

use anyhow::{bail, Context};
use clap::Parser;
use kappie_node_shipper::source::Observation;
use kappie_node_shipper::sources::{utility_sources, Roots};
use kappie_testkit::{wait_for, Netns, Proc, Veth};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    #[arg(long, default_value_t = 50)]
    ports: u16,
    #[arg(long, default_value_t = 50)]
    cycles: usize,
    #[arg(long, default_value_t = 20)]
    process_cycles: u64,
    /// Internal: run as the accepting server on this address (inside the server namespace).
    #[arg(long, hide = true)]
    serve_on: Option<std::net::Ipv4Addr>,
}

fn thread_cpu_ns() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// Raises the soft open-file limit to `n` (the hard limit cannot be raised here, so the
/// server side runs as its own process).
fn raise_nofile(n: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_max < n {
        bail!("need {n} open files but the hard limit is {}", lim.rlim_max);
    }
    lim.rlim_cur = n;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "cannot raise the open file limit to {n}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The server process: listens on `ports` ports and holds every accepted connection.
fn serve(addr: std::net::Ipv4Addr, ports: u16, sockets: usize) -> anyhow::Result<()> {
    raise_nofile(sockets as u64 + 1024)?;
    let listeners: Vec<TcpListener> = (0..ports)
        .map(|i| TcpListener::bind((addr, 9000 + i)).context("bind"))
        .collect::<Result<_, _>>()?;
    println!("listening");
    std::thread::scope(|s| {
        for l in &listeners {
            s.spawn(move || {
                let mut held = Vec::new();
                while let Ok((c, _)) = l.accept() {
                    held.push(c);
                }
            });
        }
    });
    Ok(())
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root to create network namespaces");
    }
    if let Some(addr) = args.serve_on {
        return serve(addr, args.ports, args.sockets);
    }
    raise_nofile(args.sockets as u64 + 1024)?;
    let client = Netns::new("benchc");
    let server = Netns::new("benchs");
    let veth = Veth::new(&client, &server, 9);
    let b4 = veth.b_addr4;
    let mut srv = server.command(&std::env::current_exe()?);
    srv.args([
        "--serve-on",
        &b4.to_string(),
        "--ports",
        &args.ports.to_string(),
        "--sockets",
        &args.sockets.to_string(),
    ]);
    let log = std::env::temp_dir().join(format!("kappie-bench-server-{}.log", std::process::id()));
    let _server = Proc::spawn("server", srv, &log);
    wait_for("the server to listen", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("listening"))
            .map(|_| ())
    });
    let per_port = args.sockets.div_ceil(args.ports as usize);
    let conns = client.enter(|| -> anyhow::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(args.sockets);
        for i in 0..per_port * args.ports as usize {
            let port = 9000 + (i % args.ports as usize) as u16;
            v.push(TcpStream::connect((b4, port)).with_context(|| format!("connect {b4}:{port}"))?);
        }
        Ok(v)
    })?;
    let n_client = conns.len();
    eprintln!("opened {n_client} TCP connections from the client namespace");

    // 1. In-process cycle cost.
    let (cpu, wall, obs) = client.enter(|| {
        let roots = Roots {
            proc: PathBuf::from("/proc/thread-self"),
            sys: PathBuf::from("/sys"),
        };
        let mut sources = utility_sources(&roots, 100);
        let mut cpu = Vec::new();
        let mut wall = Vec::new();
        let mut n = 0;
        for _ in 0..args.cycles {
            let mut out: Vec<Observation> = Vec::new();
            let (c0, w0) = (thread_cpu_ns(), std::time::Instant::now());
            for s in sources.iter_mut() {
                s.collect(&mut out).expect("collect");
            }
            cpu.push((thread_cpu_ns() - c0) as f64 / 1e6);
            wall.push(w0.elapsed().as_secs_f64() * 1e3);
            n = out.len();
        }
        cpu.sort_by(f64::total_cmp);
        wall.sort_by(f64::total_cmp);
        (cpu, wall, n)
    });
    let tcp_lines = client.output("ss", &["-tanH"]).lines().count();

    // 2. The real processes.
    let bin = std::env::current_exe()?.with_file_name("kappie-shipper");
    let col = bin.with_file_name("kappie-collector");
    if !bin.exists() || !col.exists() {
        bail!("build the release binaries first: cargo build --release --workspace");
    }
    let dir = std::env::temp_dir().join(format!("kappie-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut c = client.command(&col);
    c.arg("--data-dir").arg(dir.join("data")).args([
        "--http-listen",
        "127.0.0.1:19090",
        "--grpc-listen",
        "127.0.0.1:19095",
    ]);
    let _collector = Proc::spawn("collector", c, &dir.join("collector.log"));
    let mut s = client.command(&bin);
    s.args([
        "--collector",
        "http://127.0.0.1:19095",
        "--interval",
        "1s",
        "--node-name",
        "bench",
        "--http-listen",
        "127.0.0.1:0",
    ])
    .arg("--state-file")
    .arg(dir.join("state.json"));
    let shipper = Proc::spawn("shipper", s, &dir.join("shipper.log"));
    let pid = shipper.child.id();
    wait_for("shipper state file", Duration::from_secs(20), || {
        dir.join("state.json").exists().then_some(())
    });
    let t0 = proc_cpu_ticks(pid).context("shipper /proc/pid/stat")?;
    std::thread::sleep(Duration::from_secs(args.process_cycles));
    let t1 = proc_cpu_ticks(pid).context("shipper /proc/pid/stat")?;
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let rss = proc_status(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status(pid, "VmHWM:").unwrap_or(0);
    drop(shipper);
    let _ = std::fs::remove_dir_all(&dir);

    println!("sockets in the client namespace (ss -tanH): {tcp_lines}");
    println!("observations per cycle: {obs}");
    println!(
        "in-process collection cycle, CPU ms: median {:.2}  p90 {:.2}  max {:.2}  (wall median {:.2} ms, {} cycles)",
        percentile(&cpu, 0.5),
        percentile(&cpu, 0.9),
        cpu[cpu.len() - 1],
        percentile(&wall, 0.5),
        cpu.len()
    );
    println!(
        "kappie-shipper process (release, 1 s interval, {} s): CPU {:.2} ms per cycle incl. push, RSS {} KiB (peak {} KiB)",
        args.process_cycles,
        (t1 - t0) as f64 / ticks_per_s * 1000.0 / args.process_cycles as f64,
        rss,
        hwm
    );
    drop(conns);
    Ok(())
}
