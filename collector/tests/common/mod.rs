//! Shared helpers of the collector's integration tests: a collector served in-process on
//! loopback ports, processes and network namespaces that clean up on drop.
#![allow(dead_code)] // each test file uses a different subset

use kappie_collector::{Config, Running};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A collector running inside this test process.
pub struct InProcess {
    pub running: Option<Running>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    pub async fn start(data_dir: &Path) -> InProcess {
        let config = Config {
            data_dir: data_dir.to_owned(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            cache_capacity_bytes: 8 << 20,
            ..Config::default()
        };
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> InProcess {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let running = kappie_collector::serve(&config, async move {
            let _ = rx.await;
        })
        .await
        .expect("collector starts");
        InProcess {
            running: Some(running),
            stop: Some(tx),
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().grpc_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().http_addr)
    }

    /// Stops the servers and waits until the store is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(r) = self.running.take() {
            r.wait().await.expect("clean shutdown");
        }
    }
}

/// Path of a binary of this workspace, next to the collector's.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_kappie-collector")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo test --workspace` builds every binary)",
        p.display()
    );
    p
}

/// Whether this process may create network namespaces (root with CAP_SYS_ADMIN).
pub fn can_netns() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A network namespace with its loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("kappie-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it opens live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("open netns");
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Output of a command run inside the namespace.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let st = Command::new(program).args(args).status().unwrap();
    assert!(st.success(), "{program} {args:?} failed");
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        Proc {
            child: cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}")),
            name,
        }
    }

    /// SIGKILL, as the OOM killer or a node failure would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /api/v1/query` and the parsed JSON (blocking; call inside `Netns::enter` to reach
/// a collector in a namespace).
pub fn query(http: &str, q: &str) -> serde_json::Value {
    let resp = ureq::get(&format!("{http}/api/v1/query"))
        .query("query", q)
        .call();
    let text = match resp {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
        Err(e) => return serde_json::json!({"status": "unreachable", "error": e.to_string()}),
    };
    serde_json::from_str(&text).unwrap()
}

/// The single value of an instant query, if it returned exactly one series.
pub fn single_value(v: &serde_json::Value) -> Option<f64> {
    let r = v["data"]["result"].as_array()?;
    if r.len() != 1 {
        return None;
    }
    r[0]["value"][1].as_str()?.parse().ok()
}
