//! The collector under test: a `kappie-collector` child this run starts, stops (SIGTERM or
//! SIGKILL) and starts again on the same data directory and ports, or one started elsewhere
//! and named by its URLs and pid; and what /proc says about a process.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time (user + system) of process `pid`, in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis
    // start with the state (field 3), so utime and stime (14, 15) are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/<pid>/stat without a command name")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f
        .get(11..13)
        .context("/proc/<pid>/stat too short")?
        .iter()
        .map(|x| x.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf only reads a system setting.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Resident set size of process `pid` in bytes (VmRSS of /proc/<pid>/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb * 1024)
}

/// Bytes allocated on disk under `p`.
pub fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Bytes allocated on disk under each entry of `p`, by name.
pub fn du_parts(p: &Path) -> std::collections::BTreeMap<String, u64> {
    let Ok(rd) = std::fs::read_dir(p) else {
        return Default::default();
    };
    rd.flatten()
        .map(|e| {
            let path = e.path();
            let n = if path.is_dir() {
                du(&path)
            } else {
                use std::os::unix::fs::MetadataExt;
                e.metadata().map_or(0, |m| m.blocks() * 512)
            };
            (e.file_name().to_string_lossy().into_owned(), n)
        })
        .collect()
}

/// The three load averages of /proc/loadavg.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN));
    [(); 3].map(|_| it.next().unwrap_or(f64::NAN))
}

/// How to end the collector in restart mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stop {
    Term,
    Kill,
}

/// A `kappie-collector` child process on loopback ports that stay the same across
/// restarts; killed on drop.
pub struct Managed {
    binary: PathBuf,
    pub data_dir: PathBuf,
    log: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Managed {
    /// A collector with its data in `work/data` and its log in `work/collector.log`.
    pub fn new(binary: PathBuf, work: &Path, extra: Vec<String>) -> Self {
        Managed {
            binary,
            data_dir: work.join("data"),
            log: work.join("collector.log"),
            http_port: kappie_testkit::prometheus::free_port(),
            grpc_port: kappie_testkit::prometheus::free_port(),
            extra,
            child: None,
        }
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process and waits until `/-/ready` answers; returns how long that took.
    pub fn start(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--http-listen=127.0.0.1:{}", self.http_port))
            .arg(format!("--grpc-listen=127.0.0.1:{}", self.grpc_port))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (cargo build --release -p kappie-collector, or --collector-bin)",
                    self.binary.display()
                )
            })?;
        self.child = Some(child);
        let ready = format!("{}/-/ready", self.http());
        let deadline = started + Duration::from_secs(300);
        while ureq::get(&ready)
            .timeout(Duration::from_secs(2))
            .call()
            .is_err()
        {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!(
                    "the collector exited ({status}); see {}",
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the collector did not get ready; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(started.elapsed())
    }

    /// Ends the process with `how` and waits for it to exit (SIGKILL after 60 s of
    /// SIGTERM); returns how long it took to exit.
    /// Stops the collector with `how` and waits for it to exit, killing it after `timeout`:
    /// the time from the signal to the exit, and whether it had to be killed.
    pub fn stop(&mut self, how: Stop, timeout: Duration) -> anyhow::Result<(Duration, bool)> {
        let Some(mut child) = self.child.take() else {
            return Ok((Duration::ZERO, false));
        };
        let started = Instant::now();
        let sig = match how {
            Stop::Term => libc::SIGTERM,
            Stop::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        if unsafe { libc::kill(child.id() as libc::pid_t, sig) } != 0 {
            bail!("kill({}): {}", child.id(), std::io::Error::last_os_error());
        }
        loop {
            if child.try_wait()?.is_some() {
                return Ok((started.elapsed(), false));
            }
            if started.elapsed() > timeout {
                eprintln!(
                    "the collector did not exit {} s after the signal; killing it",
                    timeout.as_secs()
                );
                child.kill()?;
                child.wait()?;
                return Ok((started.elapsed(), true));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
