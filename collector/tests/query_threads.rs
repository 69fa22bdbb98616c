//! Query threads of the real collector process: `--query-max-concurrency` evaluations run at
//! once, the rest wait, and the wait counts against `--query-timeout-seconds` (as in
//! Prometheus); `/metrics` shows both.

mod common;

use kappie_testkit::wait_for;
use std::time::Duration;

fn metric(http: &str, line_start: &str) -> Option<f64> {
    let body = ureq::get(&format!("{http}/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_query_that_waits_past_the_timeout_for_a_thread_times_out_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (_proc, http, _) = common::collector_process(
        &dir.path().join("data"),
        &dir.path().join("collector.log"),
        &[
            "--query-max-concurrency",
            "1",
            "--query-timeout-seconds",
            "1",
            "--query-max-tokens",
            "50000",
        ],
    );
    common::wait_ready(&http);
    assert_eq!(metric(&http, "kappie_query_concurrency_max "), Some(1.0));
    assert_eq!(
        metric(&http, "kappie_queries{state=\"running\"} "),
        Some(0.0)
    );

    // A query that holds the one thread for longer than the timeout: the parser's time
    // grows with the square of a chain's length (20,000 terms: 2.7 s in a release build).
    let long = vec!["1"; 20_000].join("+");
    let url = format!("{http}/api/v1/query");
    let first = std::thread::spawn({
        let url = url.clone();
        move || {
            ureq::post(&url)
                .send_form(&[("query", &long)])
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        }
    });
    wait_for(
        "the long query to run on the query thread",
        Duration::from_secs(30),
        || (metric(&http, "kappie_queries{state=\"running\"} ") == Some(1.0)).then_some(()),
    );

    let (code, body) = match ureq::get(&url).query("query", "vector(1)").call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, v["errorType"].as_str()),
        (503, Some("timeout")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("query queue"), "{v}");

    let _ = first.join().unwrap();
    wait_for("the queue to empty", Duration::from_secs(30), || {
        (metric(&http, "kappie_queries{state=\"waiting\"} ") == Some(0.0)).then_some(())
    });
    let r: serde_json::Value = serde_json::from_str(
        &ureq::get(&url)
            .query("query", "vector(1)")
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r["data"]["result"][0]["value"][1], "1", "{r}");
}
