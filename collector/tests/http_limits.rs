//! Limits on what HTTP clients control (issue 16): a client that sends its headers too
//! slowly is disconnected, requests past `--http-max-concurrent-requests` get 503 at once
//! while the health endpoints still answer, and a request whose body never arrives ends
//! with 503 after `--http-request-timeout-seconds`.

mod common;

use common::InProcess;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection (or 15 s pass); the text read.
fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                    break;
                }
            }
            Err(e) => panic!("no answer and no close after {:?}: {e}", started.elapsed()),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slow_clients_and_floods_are_cut_off_and_probes_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let config = kappie_collector::Config {
        data_dir: dir.path().to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_max_concurrent_requests: 2,
        http_request_timeout_seconds: 3,
        http_header_timeout_seconds: 1,
        self_scrape_interval_seconds: 0,
        ..kappie_collector::Config::default()
    };
    let c = InProcess::start_with(config).await;
    let base = c.http_url();
    let addr = base.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || {
        // Headers never finished: the connection is closed after about a second.
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /api/v1/query?query=1 HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let (text, took) = read_to_close(&mut slow);
        assert!(took < Duration::from_secs(10), "closed after {took:?}");
        assert!(!text.contains("200 OK"), "{text}");

        // Two requests whose bodies never come hold both slots.
        let mut holders: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(
                    b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\n\
                      Content-Type: application/x-www-form-urlencoded\r\n\
                      Content-Length: 100\r\n\r\nquery=1",
                )
                .unwrap();
                s
            })
            .collect();
        // A third is refused at once, with what to do; probes still answer.
        let refused =
            kappie_testkit::wait_for("the slots to fill", Duration::from_secs(10), || {
                match ureq::get(&format!("{base}/api/v1/query?query=1")).call() {
                    Err(ureq::Error::Status(503, r)) => Some(r.into_string().unwrap()),
                    _ => None,
                }
            });
        assert!(
            refused.contains("--http-max-concurrent-requests"),
            "{refused}"
        );
        for probe in ["/-/healthy", "/-/ready"] {
            assert_eq!(
                ureq::get(&format!("{base}{probe}"))
                    .call()
                    .unwrap()
                    .status(),
                200
            );
        }
        // The held requests end with 503 when their time is up, and free their slots.
        for h in &mut holders {
            let (text, took) = read_to_close(h);
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
            assert!(text.contains("--http-request-timeout-seconds"), "{text}");
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
        let ok = ureq::get(&format!("{base}/api/v1/query?query=1"))
            .call()
            .unwrap();
        assert_eq!(ok.status(), 200);
    })
    .await
    .unwrap();
    c.stop().await;
}
