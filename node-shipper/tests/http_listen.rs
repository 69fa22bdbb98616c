//! `--http-listen` as the operator meets it: the real binary, no collector, every source
//! off (nothing here needs root).

use kappie_testkit::{wait_for, Proc};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn shipper(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kappie-shipper"));
    cmd.args(["--disable-sources", "netstat,sockets,interfaces,ebpf"])
        .args(["--collector", "http://127.0.0.1:1", "--node-name", "cli"])
        .args(["--interval", "200ms"])
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .args(args)
        .env("RUST_LOG", "info");
    cmd
}

/// Status code and body of `GET path` (HTTP/1.0, so the server closes the connection).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[test]
fn an_address_in_use_is_a_fatal_error_that_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let log = dir.path().join("shipper.log");
    let mut p = Proc::spawn(
        "shipper",
        shipper(dir.path(), &["--http-listen", &addr]),
        &log,
    );
    let status = wait_for("the shipper to exit", Duration::from_secs(30), || {
        p.child.try_wait().unwrap()
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "cannot listen on {addr}: address in use; set --http-listen"
        )),
        "{text}"
    );
}

#[test]
fn json_logs_give_the_bound_address_and_the_endpoints_answer_there() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("shipper.log");
    let _p = Proc::spawn(
        "shipper",
        shipper(
            dir.path(),
            &["--http-listen", "127.0.0.1:0", "--log-format", "json"],
        ),
        &log,
    );
    let addr = wait_for("the bound address", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["http_listen"].as_str().map(str::to_owned)
        })
    });
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let (status, body) = wait_for("a healthy shipper", Duration::from_secs(30), || {
        get(&addr, "/-/healthy").filter(|(s, _)| *s == 200)
    });
    assert_eq!(status, 200, "{body}");
    // No collector: nothing is ever acknowledged.
    let (status, body) = get(&addr, "/-/ready").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("not acknowledged"), "{body}");
    let (_, metrics) = get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains(
            "kappie_shipper_info{version=\"0.1.0\",node_name=\"cli\",cluster=\"default\"} 1"
        ),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "every log line is JSON:\n{text}"
    );
}
