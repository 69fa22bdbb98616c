//! `kappie query` against a real collector: instant and range tables, times, scalars and
//! strings, raw JSON, and the API's own error for a bad query.

mod common;

use common::{collector_with_fixture, kappie, now_ms};

const REMOTES_BY_ADDRESS: &str =
    r#"sort_desc(sum by (address, port) (kappie_tcp_connection_remote{address!="other"}))"#;

/// `YYYY-MM-DDTHH:MM:SSZ` and `HH:MM:SS` of unix seconds (Howard Hinnant's civil_from_days).
fn utc(t: i64) -> (String, String) {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let r = t.rem_euclid(86_400);
    let hms = format!("{:02}:{:02}:{:02}", r / 3600, r / 60 % 60, r % 60);
    (format!("{y:04}-{m:02}-{d:02}T{hms}Z"), hms)
}

#[test]
fn an_instant_vector_is_a_row_per_series() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["query", REMOTES_BY_ADDRESS]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "address port VALUE",
            "192.0.2.10 443 12",
            "198.51.100.7 5432 10",
            "2001:db8::1 80 3",
        ],
        "{r:?}"
    );
}

#[test]
fn values_are_shown_without_float_noise_and_exact_in_json() {
    let c = collector_with_fixture();
    let q = "sort_desc(sum by (node_name) (rate(kappie_forward_bytes[5m])))";
    // One evaluation time for the three answers: `rate` extrapolates to the window's edges,
    // so answers a few milliseconds apart differ in the last bits.
    let at = format!("{}", now_ms() / 1000 - 1);
    let r = kappie(&c.http, &["query", q, "--time", &at]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "node_name VALUE",
            "node-b 250040",
            "node-c 15000",
            "node-a 2100"
        ],
        "{r:?}"
    );
    let api = kappie_testkit::prometheus::get_json(
        &format!("{}/api/v1/query", c.http),
        &[("query", q), ("time", &at)],
    );
    let json = kappie(&c.http, &["-o", "json", "query", q, "--time", &at]).json();
    let values = |v: &serde_json::Value| -> Vec<f64> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(values(&json), values(&api["data"]), "{json}");
}

#[test]
fn a_range_query_is_series_by_time() {
    let c = collector_with_fixture();
    let end = now_ms() / 1000 - 60;
    let r = kappie(
        &c.http,
        &[
            "query",
            r#"sum by (port) (kappie_tcp_connection_remote{address!="other"})"#,
            "--range",
            "2m",
            "--step",
            "1m",
            "--time",
            &end.to_string(),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let times: Vec<String> = [end - 120, end - 60, end]
        .iter()
        .map(|&t| utc(t).1)
        .collect();
    let mut rows = r.rows();
    rows[1..].sort();
    assert_eq!(
        rows,
        [
            format!("port {}", times.join(" ")),
            "443 12 12 12".to_owned(),
            "5432 10 10 10".to_owned(),
            "80 3 3 3".to_owned(),
        ],
        "{r:?}"
    );
}

#[test]
fn the_time_flag_takes_rfc3339() {
    let c = collector_with_fixture();
    let at = now_ms() / 1000 - 120;
    let q = r#"kappie_tcp_connection_remote{node_name="node-b",port="443"}"#;
    let r = kappie(&c.http, &["-o", "json", "query", q, "--time", &utc(at).0]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["resultType"], "vector", "{v}");
    assert_eq!(v["result"][0]["value"][0], at, "{v}");
    assert_eq!(v["result"][0]["value"][1], "5", "{v}");
}

#[test]
fn json_output_is_the_api_data_object() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["-o", "json", "query", REMOTES_BY_ADDRESS]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["resultType"], "vector", "{v}");
    let result = v["result"].as_array().expect("result");
    assert_eq!(result.len(), 3, "{v}");
    assert_eq!(result[0]["metric"]["address"], "192.0.2.10", "{v}");
    assert_eq!(result[0]["metric"]["port"], "443", "{v}");
    assert_eq!(result[0]["value"][1], "12", "{v}");
}

#[test]
fn scalars_and_strings_print_their_value() {
    let c = collector_with_fixture();
    let r = kappie(
        &c.http,
        &[
            "query",
            r#"scalar(sum(kappie_tcp_connection_remote{address="192.0.2.10"}))"#,
        ],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "12\n"), "{r:?}");
    let r = kappie(&c.http, &["query", r#""hello""#]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "hello\n"), "{r:?}");
}

#[test]
fn an_empty_result_says_so_on_stderr() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["query", "kappie_no_such_metric"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert!(r.stderr.contains("empty result"), "{r:?}");
}

#[test]
fn a_bad_query_exits_1_with_the_api_error() {
    let c = collector_with_fixture();
    let q = "sum(rate(kappie_drop_count[5m]";
    let api =
        kappie_testkit::prometheus::get_json(&format!("{}/api/v1/query", c.http), &[("query", q)]);
    assert_eq!(api["errorType"], "bad_data", "{api}");
    let error = api["error"].as_str().expect("the API's error text");
    let r = kappie(&c.http, &["query", q]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert_eq!(r.stderr, format!("kappie: bad_data: {error}\n"), "{r:?}");
}
