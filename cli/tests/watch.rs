//! `kappie watch` in a real terminal: tmux runs it in a detached 120×30 session on a tmux
//! server of the test's own (its socket in a temp dir), the screen is read with
//! `capture-pane`, keys are typed with `send-keys`, and a marker file gets the exit code.

mod common;

use common::{collector_with_fixture, Collector};
use kappie_testkit::{require, wait_for, Need};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TMUX: Need = Need::Tool {
    program: "tmux",
    package: "tmux",
};

/// `kappie args…` in a tmux session; the tmux server is killed on drop.
struct Tmux {
    socket: PathBuf,
    marker: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn start(args: &[&str]) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let marker = dir.path().join("exit-code");
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let command: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_kappie"))
            .chain(args.iter().copied())
            .map(quote)
            .collect();
        let shell = format!(
            "{}; echo $? > {}",
            command.join(" "),
            quote(marker.to_str().unwrap())
        );
        let t = Tmux {
            socket,
            marker,
            _dir: dir,
        };
        let st = t
            .tmux()
            .args(["new-session", "-d", "-s", "watch", "-x", "120", "-y", "30"])
            .arg(shell)
            .env_remove("KAPPIE_SERVER")
            .env_remove("KAPPIE_TOKEN")
            .env_remove("KAPPIE_USER")
            .status()
            .unwrap();
        assert!(st.success(), "tmux new-session failed");
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// The screen as text (empty once the session is gone).
    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "watch"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows every one of `texts`; returns the screen.
    fn wait_for_screen(&self, texts: &[&str]) -> String {
        let mut last = String::new();
        let found = wait_until(Duration::from_secs(30), || {
            last = self.screen();
            texts.iter().all(|t| last.contains(t)).then_some(())
        });
        assert!(
            found.is_some(),
            "{texts:?} never showed; the screen:\n{last}"
        );
        last
    }

    fn send(&self, keys: &str) {
        let st = self
            .tmux()
            .args(["send-keys", "-t", "watch", keys])
            .status()
            .unwrap();
        assert!(st.success(), "send-keys {keys}");
    }

    /// The exit code `kappie` wrote into the marker file, waited for.
    fn exit_code(&self) -> i32 {
        wait_for("kappie to exit", Duration::from_secs(10), || {
            let s = std::fs::read_to_string(&self.marker).ok()?;
            s.trim().parse().ok()
        })
    }

    fn session_alive(&self) -> bool {
        self.tmux()
            .args(["has-session", "-t", "watch"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Like `wait_for`, but `None` on timeout instead of a panic (to print the screen).
fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn marker_absent(p: &Path) -> bool {
    !p.exists()
}

#[test]
fn watch_shows_the_view_and_quits_on_q() {
    if !require(&[TMUX]) {
        return;
    }
    let c = collector_with_fixture();
    let t = Tmux::start(&["--server", &c.http, "watch", "nodes", "--interval", "1s"]);
    let screen = t.wait_for_screen(&["node-b", "250 kB/s", "350 pkt/s", "node-a"]);
    assert!(
        screen.contains(&format!("kappie watch nodes · {} · every 1s", c.http)),
        "{screen}"
    );
    assert!(screen.contains("UTC"), "{screen}");
    assert!(marker_absent(&t.marker), "still running");
    t.send("q");
    assert_eq!(t.exit_code(), 0);
    wait_for("the tmux session to end", Duration::from_secs(10), || {
        (!t.session_alive()).then_some(())
    });
}

#[test]
fn ctrl_c_quits_too() {
    if !require(&[TMUX]) {
        return;
    }
    let c = collector_with_fixture();
    let t = Tmux::start(&["--server", &c.http, "watch", "drops"]);
    t.wait_for_screen(&["NETFILTER_DROP"]);
    t.send("C-c");
    assert_eq!(t.exit_code(), 0);
}

#[test]
fn watch_keeps_retrying_while_the_collector_is_unreachable() {
    if !require(&[TMUX]) {
        return;
    }
    let port = kappie_testkit::prometheus::free_port();
    let server = format!("http://127.0.0.1:{port}");
    let t = Tmux::start(&["--server", &server, "watch", "remotes", "--interval", "1s"]);
    let screen = t.wait_for_screen(&["cannot reach the collector", "retrying every 1s"]);
    assert!(screen.contains("port-forward"), "{screen}");
    assert!(marker_absent(&t.marker), "watch must not exit:\n{screen}");

    // The collector comes up where watch looks: the next refresh shows its data.
    let c = Collector::start_in(tempfile::tempdir().unwrap(), port, &[]);
    c.write(common::fixture(common::now_ms()));
    let screen = t.wait_for_screen(&["192.0.2.10", "198.51.100.7"]);
    assert!(
        !screen.contains("cannot reach"),
        "the error line is gone:\n{screen}"
    );
    t.send("q");
    assert_eq!(t.exit_code(), 0);
}
