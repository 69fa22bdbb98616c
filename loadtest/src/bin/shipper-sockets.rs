//! Benchmark: the node shipper's collection cycle on a node with many TCP sockets.
//!
//! Makes two network namespaces joined by a veth pair, opens `--sockets` TCP connections from
//! the client namespace to listeners in the server namespace (spread over `--ports` ports,
//! so `kappie_tcp_connection_remote` has real remotes), then
//! 1. runs the utility sources' collection (netstat, sockets, interfaces) `--cycles` times
//!    on a thread inside the client namespace, `--rounds` times over, and reports the CPU
//!    time of one cycle and of the sockets source alone (CLOCK_THREAD_CPUTIME_ID, user and
//!    system time in nanoseconds), for each `--reader`: netlink sock_diag and the /proc
//!    fallback, alternating cycle by cycle so that both see the same machine load;
//! 2. unless `--process-cycles 0`, runs the release `kappie-shipper` and `kappie-collector`
//!    processes in the client namespace for `--process-cycles` intervals of 1 s and reports
//!    the shipper's RSS and CPU time per cycle from /proc, with every source on (eBPF on
//!    the client end of the veth, `--ebpf-required`) and, with `--rss-per-source`, once
//!    more for each source switched off (`--disable-sources`) and with all of them off.
//!
//! Needs root. Build first: `cargo build --release -p kappie-loadtest --bin shipper-sockets`
//! for part 1, `cargo build --release --workspace` for part 2.

use anyhow::{bail, Context};
use clap::Parser;
use kappie_node_shipper::source::Observation;
use kappie_node_shipper::source::Source;
use kappie_node_shipper::sources::interfaces::InterfacesSource;
use kappie_node_shipper::sources::netstat::NetstatSource;
use kappie_node_shipper::sources::sockets::SocketsSource;
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
    /// Measure the cycles this many times over (each round printed with the load average).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Socket readers to measure: netlink, proc, or both.
    #[arg(long, default_value = "both")]
    reader: String,
    /// 0 skips the real-process part.
    #[arg(long, default_value_t = 20)]
    process_cycles: u64,
    /// Run the shipper process again with each source switched off in turn, and with all
    /// of them off, reporting its RSS in each run.
    #[arg(long)]
    rss_per_source: bool,
    /// Internal: run as the accepting server on this address (inside the server namespace).
    #[arg(long, hide = true)]
    serve_on: Option<std::net::Ipv4Addr>,
}

/// Median, p90 and max of `v` (sorted here), in the unit of `v`.
fn summary(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "median {:.2}  p90 {:.2}  max {:.2}",
        percentile(v, 0.5),
        percentile(v, 0.9),
        v[v.len() - 1]
    )
}

/// One reader's measurements over a round: CPU ms of the whole cycle and of the sockets
/// source, wall ms of the cycle.
#[derive(Default)]
struct Cycles {
    cycle_cpu: Vec<f64>,
    sockets_cpu: Vec<f64>,
    wall: Vec<f64>,
    observations: usize,
}

/// The utility sources in `utility_sources`' order, with the sockets source reading
/// through `reader`. Called on the thread that collects, in the client namespace (the
/// netlink socket is opened in the namespace of the thread that makes it).
fn sources(reader: &str) -> anyhow::Result<Vec<Box<dyn Source>>> {
    // /proc/thread-self/net is the collecting thread's namespace.
    let proc = PathBuf::from("/proc/thread-self");
    let sockets = match reader {
        "netlink" => SocketsSource::netlink_only(100).context("netlink sock_diag")?,
        "proc" => SocketsSource::proc_only(proc.clone(), 100),
        r => bail!("unknown reader {r:?}: netlink or proc"),
    };
    Ok(vec![
        Box::new(NetstatSource::new(proc)),
        Box::new(sockets),
        Box::new(InterfacesSource::new(PathBuf::from("/sys"))),
    ])
}

/// One collection cycle: its CPU ms, the sockets source's CPU ms, wall ms.
fn cycle(sources: &mut [Box<dyn Source>], out: &mut Vec<Observation>) -> (f64, f64, f64) {
    out.clear();
    let (c0, w0) = (kappie_loadtest::thread_cpu_ns(), std::time::Instant::now());
    let mut sockets = 0;
    for s in sources.iter_mut() {
        let t = kappie_loadtest::thread_cpu_ns();
        s.collect(out).expect("collect");
        if s.name() == "sockets" {
            sockets = kappie_loadtest::thread_cpu_ns() - t;
        }
    }
    (
        (kappie_loadtest::thread_cpu_ns() - c0) as f64 / 1e6,
        sockets as f64 / 1e6,
        w0.elapsed().as_secs_f64() * 1e3,
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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

/// Runs the shipper in `client` for `seconds` intervals of 1 s with eBPF on `iface` (its
/// maps pinned in a directory of the run's own) and `disabled` sources off; returns its CPU
/// ms per cycle, RSS and peak RSS in KiB at the end.
fn shipper_run(
    client: &Netns,
    bin: &std::path::Path,
    dir: &std::path::Path,
    run: usize,
    iface: &str,
    disabled: &str,
    seconds: u64,
) -> anyhow::Result<(f64, u64, u64)> {
    let state = dir.join(format!("state-{run}.json"));
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/kappie-rss-{}-{run}",
        std::process::id()
    ));
    let mut s = client.command(bin);
    s.args([
        "--collector",
        "http://127.0.0.1:19095",
        "--interval",
        "1s",
        "--node-name",
        &format!("bench-{run}"),
        "--http-listen",
        "127.0.0.1:0",
        "--ebpf-interfaces",
        iface,
    ])
    .arg("--ebpf-pin-dir")
    .arg(&pins)
    .arg("--state-file")
    .arg(&state);
    if disabled.is_empty() {
        s.arg("--ebpf-required");
    } else {
        s.args(["--disable-sources", disabled]);
    }
    let shipper = Proc::spawn("shipper", s, &dir.join(format!("shipper-{run}.log")));
    let pid = shipper.child.id();
    wait_for("shipper state file", Duration::from_secs(20), || {
        state.exists().then_some(())
    });
    let t0 = proc_cpu_ticks(pid).context("shipper /proc/pid/stat")?;
    std::thread::sleep(Duration::from_secs(seconds));
    let t1 = proc_cpu_ticks(pid).context("shipper /proc/pid/stat")?;
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let rss = proc_status(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status(pid, "VmHWM:").unwrap_or(0);
    drop(shipper);
    let _ = std::fs::remove_dir_all(&pins);
    Ok((
        (t1 - t0) as f64 / ticks_per_s * 1000.0 / seconds as f64,
        rss,
        hwm,
    ))
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

    // 1. In-process cycle cost, the readers alternating cycle by cycle.
    let readers: Vec<&str> = match args.reader.as_str() {
        "both" => vec!["netlink", "proc"],
        r => vec![r],
    };
    let tcp_lines = client.output("ss", &["-tanH"]).lines().count();
    println!("sockets in the client namespace (ss -tanH): {tcp_lines}");
    client.enter(|| -> anyhow::Result<()> {
        let mut sets: Vec<Vec<Box<dyn Source>>> =
            readers.iter().map(|r| sources(r)).collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for set in sets.iter_mut() {
            cycle(set, &mut out); // warm-up: first reads, allocations, the netlink buffer
        }
        for round in 1..=args.rounds {
            let load = loadavg();
            let mut per: Vec<Cycles> = readers.iter().map(|_| Cycles::default()).collect();
            for _ in 0..args.cycles {
                for (set, m) in sets.iter_mut().zip(per.iter_mut()) {
                    let (c, s, w) = cycle(set, &mut out);
                    m.cycle_cpu.push(c);
                    m.sockets_cpu.push(s);
                    m.wall.push(w);
                    m.observations = out.len();
                }
            }
            println!(
                "round {round} of {}, load average {load} at the start, {} at the end, {} cycles per reader:",
                args.rounds,
                loadavg(),
                args.cycles
            );
            for (r, m) in readers.iter().zip(per.iter_mut()) {
                println!("  {r}, {} observations per cycle:", m.observations);
                println!("    sockets source CPU ms  {}", summary(&mut m.sockets_cpu));
                println!("    whole cycle CPU ms     {}", summary(&mut m.cycle_cpu));
                println!("    whole cycle wall ms    {}", summary(&mut m.wall));
            }
        }
        Ok(())
    })?;
    if args.process_cycles == 0 {
        drop(conns);
        return Ok(());
    }

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
    let mut runs: Vec<(&str, &str)> = vec![("every source on", "")];
    if args.rss_per_source {
        runs.extend([
            ("without ebpf", "ebpf"),
            ("without sockets", "sockets"),
            ("without netstat", "netstat"),
            ("without interfaces", "interfaces"),
            ("without self", "self"),
            (
                "none (ebpf,sockets,netstat,interfaces,self off)",
                "ebpf,sockets,netstat,interfaces,self",
            ),
        ]);
    }
    println!(
        "kappie-shipper process (release, 1 s interval, {} s per run), load average {}:",
        args.process_cycles,
        loadavg()
    );
    for (i, (what, disabled)) in runs.iter().enumerate() {
        let (cpu_ms, rss, hwm) = shipper_run(
            &client,
            &bin,
            &dir,
            i,
            &veth.a_if,
            disabled,
            args.process_cycles,
        )?;
        println!(
            "  {what}: CPU {cpu_ms:.2} ms per cycle incl. push, RSS {rss} KiB (peak {hwm} KiB), load {}",
            loadavg()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(conns);
    Ok(())
}
