//! A clean stop (SIGTERM) of the real collector process while a request is still open:
//! the collector waits `--shutdown-grace-seconds` for it, then closes the store anyway
//! (before, a stop that outlasted the grace exited without closing it).

mod common;

use kappie_testkit::prometheus::{get_json, remote_write, series};
use kappie_testkit::{wait_for, Proc};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn start(dir: &Path, round: usize) -> (Proc, String) {
    let (proc, http, _) = common::collector_process(
        &dir.join("data"),
        &dir.join(format!("collector-{round}.log")),
        &[
            "--shutdown-grace-seconds",
            "1",
            // The open request below would otherwise be cut off by the server before the
            // grace.
            "--http-request-timeout-seconds",
            "300",
            "--http-header-timeout-seconds",
            "300",
        ],
    );
    common::wait_ready(&http);
    (proc, http)
}

#[test]
fn a_stop_closes_the_store_even_when_a_request_outlasts_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, http) = start(dir.path(), 0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    remote_write(
        &format!("{http}/api/v1/write"),
        vec![series(
            &[("__name__", "stop_test_total"), ("job", "t")],
            &[(now - 2_000, 1.0), (now - 1_000, 2.0)],
        )],
    )
    .unwrap();

    // A remote write whose body never finishes: the HTTP server cannot finish its
    // graceful stop while it is open.
    let mut open = TcpStream::connect(http.trim_start_matches("http://")).unwrap();
    open.write_all(
        b"POST /api/v1/write HTTP/1.1\r\nHost: k\r\nContent-Type: application/x-protobuf\r\n\
          Content-Encoding: snappy\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    open.flush().unwrap();

    let pid = proc.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_for(
        "the collector to exit after SIGTERM",
        Duration::from_secs(60),
        || proc.child.try_wait().unwrap(),
    );
    assert!(status.success(), "collector exited with {status}");
    let log = std::fs::read_to_string(dir.path().join("collector-0.log")).unwrap();
    let anyway = log
        .find("closing the store anyway")
        .unwrap_or_else(|| panic!("no grace-period warning in the log:\n{log}"));
    let closed = log
        .find("store closed")
        .unwrap_or_else(|| panic!("the store was not closed:\n{log}"));
    assert!(
        closed > anyway,
        "store closed before the grace ran out:\n{log}"
    );
    drop(open);

    // The closed store opens again with the samples.
    let (_proc, http) = start(dir.path(), 1);
    let r = get_json(
        &format!("{http}/api/v1/query"),
        &[
            ("query", "stop_test_total"),
            ("time", &(now / 1000).to_string()),
        ],
    );
    assert_eq!(r["data"]["result"][0]["value"][1], "2", "{r}");
}
