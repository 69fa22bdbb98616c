//! Load testing and benchmarks for Kappie.
//!
//! This crate owns the load generators and benchmarks that run against real Kappie
//! processes: `shipper-sockets` (the node shipper's collection cycle on a node with 10,000
//! TCP sockets, in network namespaces it makes itself), `cluster-sim` (a cluster's worth of
//! simulated shippers against one collector, [`cluster`]), and the query clients and
//! storage benchmarks that drive one collector side by side with a real Prometheus.
//! Figures and the commands that produced them go in `docs/BENCHMARKS.md`.

pub mod cluster;
pub mod shapes;

use anyhow::{bail, Context};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh directory for one benchmark run: `<tmp>/kappie-<name>-<pid>`.
pub fn work_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("kappie-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This thread's CPU time, user and system, in ns: the scheduler's own accounting, not
/// getrusage's (which counts in ticks, 4 ms here).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A `kappie-collector` process on loopback, killed on drop.
pub struct Collector {
    child: Child,
    /// `http://127.0.0.1:<port>` of its HTTP API.
    pub base: String,
}

impl Collector {
    /// Starts `binary` with its data in `dir/kappie`, its log in `dir/kappie.log` and
    /// `extra` flags, and waits until it is ready.
    pub fn start(binary: &str, dir: &Path, extra: &[String]) -> anyhow::Result<Collector> {
        let port = kappie_testkit::prometheus::free_port();
        let log = dir.join("kappie.log");
        let child = Command::new(binary)
            .arg(format!("--data-dir={}", dir.join("kappie").display()))
            .arg(format!("--http-listen=127.0.0.1:{port}"))
            .arg(format!(
                "--grpc-listen=127.0.0.1:{}",
                kappie_testkit::prometheus::free_port()
            ))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| {
                format!("cannot start {binary} (cargo build --release -p kappie-collector)")
            })?;
        let c = Collector {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/-/ready", c.base)).call().is_err() {
            if Instant::now() > deadline {
                bail!("kappie did not get ready; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }
}

impl Collector {
    /// The collector's process id (for CPU and memory measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
