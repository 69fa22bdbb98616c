//! The Prometheus HTTP API over loopback: shapes, parameters, errors, GET and POST.

mod common;

use common::InProcess;
use kappie_storage::{Appender, Labels};
use serde_json::{json, Value};

fn get(url: &str) -> (u16, Value) {
    let (code, text) = match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    };
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn post(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let (code, text) = match ureq::post(url).send_form(form) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    };
    (code, serde_json::from_str(&text).unwrap())
}

fn qs(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[tokio::test]
async fn series_labels_values_metadata_buildinfo() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let store = c.running.as_ref().unwrap().store.clone();
    let mut a = store.appender();
    let l = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().map(|(n, v)| (*n, *v))).unwrap();
    a.append(
        &l(&[
            ("__name__", "kappie_tcp_state"),
            ("state", "LISTEN"),
            ("node_name", "a"),
        ]),
        1_000_000,
        3.0,
    )
    .unwrap();
    a.append(
        &l(&[
            ("__name__", "kappie_tcp_state"),
            ("state", "ESTABLISHED"),
            ("node_name", "b"),
        ]),
        1_000_000,
        9.0,
    )
    .unwrap();
    a.append(
        &l(&[
            ("__name__", "kappie_udp_active_sockets"),
            ("node_name", "a"),
        ]),
        5_000_000,
        4.0,
    )
    .unwrap();
    a.commit().unwrap();
    let base = c.http_url();

    let out = tokio::task::spawn_blocking(move || {
        // /api/v1/series, GET and POST, union of match[] and time bounds.
        let (code, v) = get(&format!(
            "{base}/api/v1/series?{}",
            qs(&[
                ("match[]", "kappie_tcp_state{state=\"LISTEN\"}"),
                ("match[]", "kappie_udp_active_sockets")
            ])
        ));
        assert_eq!(code, 200, "{v}");
        assert_eq!(
            v["data"],
            json!([
                {"__name__": "kappie_tcp_state", "node_name": "a", "state": "LISTEN"},
                {"__name__": "kappie_udp_active_sockets", "node_name": "a"}
            ])
        );
        let (_, v) = post(
            &format!("{base}/api/v1/series"),
            &[("match[]", "{node_name=\"b\"}"), ("end", "2000")],
        );
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
        let (_, v) = get(&format!(
            "{base}/api/v1/series?{}",
            qs(&[("match[]", "{node_name=~\".+\"}"), ("start", "4000")])
        ));
        assert_eq!(
            v["data"],
            json!([{"__name__": "kappie_udp_active_sockets", "node_name": "a"}])
        );
        let (code, v) = get(&format!("{base}/api/v1/series"));
        assert_eq!((code, v["errorType"].as_str()), (400, Some("bad_data")));
        assert_eq!(v["error"], "no match[] parameter provided");
        let (code, v) = get(&format!(
            "{base}/api/v1/series?{}",
            qs(&[("match[]", "rate(x[5m])")])
        ));
        assert_eq!((code, v["status"].as_str()), (400, Some("error")), "{v}");
        let (code, _) = get(&format!(
            "{base}/api/v1/series?{}",
            qs(&[("match[]", "up"), ("start", "20"), ("end", "10")])
        ));
        assert_eq!(code, 400);

        // /api/v1/labels
        let (_, v) = get(&format!("{base}/api/v1/labels"));
        assert_eq!(v["data"], json!(["__name__", "node_name", "state"]));
        let (_, v) = post(
            &format!("{base}/api/v1/labels"),
            &[("match[]", "kappie_udp_active_sockets")],
        );
        assert_eq!(v["data"], json!(["__name__", "node_name"]));
        let (_, v) = get(&format!("{base}/api/v1/labels?limit=1"));
        assert_eq!(v["data"], json!(["__name__"]));

        // /api/v1/label/<name>/values
        let (_, v) = get(&format!("{base}/api/v1/label/state/values"));
        assert_eq!(v["data"], json!(["ESTABLISHED", "LISTEN"]));
        let (_, v) = get(&format!(
            "{base}/api/v1/label/__name__/values?{}",
            qs(&[("start", "3000")])
        ));
        assert_eq!(v["data"], json!(["kappie_udp_active_sockets"]));
        let (_, v) = get(&format!(
            "{base}/api/v1/label/node_name/values?{}",
            qs(&[("match[]", "kappie_tcp_state{state=\"LISTEN\"}")])
        ));
        assert_eq!(v["data"], json!(["a"]));
        let (_, v) = get(&format!("{base}/api/v1/label/missing/values"));
        assert_eq!(v["data"], json!([]));
        let (code, _) = get(&format!("{base}/api/v1/label/bad-name/values"));
        assert_eq!(code, 400);

        // /api/v1/metadata: every kappie metric with type and help.
        let (_, v) = get(&format!("{base}/api/v1/metadata"));
        assert_eq!(v["data"].as_object().unwrap().len(), 12);
        assert_eq!(v["data"]["kappie_drop_count"][0]["type"], "counter");
        assert_eq!(v["data"]["kappie_tcp_state"][0]["type"], "gauge");
        let (_, v) = get(&format!(
            "{base}/api/v1/metadata?metric=kappie_udp_active_sockets"
        ));
        assert_eq!(
            v["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
            vec!["kappie_udp_active_sockets"]
        );

        // /api/v1/status/buildinfo
        let (code, v) = get(&format!("{base}/api/v1/status/buildinfo"));
        assert_eq!(code, 200);
        assert!(v["data"]["version"].as_str().unwrap().starts_with("2."));
        "ok"
    })
    .await
    .unwrap();
    assert_eq!(out, "ok");
    c.stop().await;
}

/// A series for a remote write body: labels and (timestamp, value) samples.
type TestSeries<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn write_body(series: &[TestSeries]) -> Vec<u8> {
    use kappie_proto::prometheus as pb;
    use prost::Message;
    let req = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| pb::Label {
                        name: (*n).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|(t, v)| pb::Sample {
                        timestamp: *t,
                        value: *v,
                    })
                    .collect(),
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

fn send(url: &str, body: &[u8]) -> (u16, String) {
    match ureq::post(url)
        .set("Content-Encoding", "snappy")
        .set("Content-Type", "application/x-protobuf")
        .send_bytes(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn remote_write_stores_samples_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let store = c.running.as_ref().unwrap().store.clone();
    let base = c.http_url();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let out = tokio::task::spawn_blocking(move || {
        let url = format!("{base}/api/v1/write");
        let good = write_body(&[(
            &[("__name__", "rw_metric"), ("job", "a")],
            &[(now - 2000, 1.0), (now - 1000, 2.5)],
        )]);
        assert_eq!(send(&url, &good).0, 204);
        let v = common::query(&base, "rw_metric");
        assert_eq!(common::single_value(&v), Some(2.5), "{v}");

        let stored = || {
            let m = kappie_storage::Matcher::new(kappie_storage::MatchOp::Regex, "__name__", ".+")
                .unwrap();
            kappie_storage::Querier::select(&store, &[m], i64::MIN, i64::MAX).unwrap()
        };
        let before = stored();
        // The protobuf of a good request, cut short and with a label value that is not
        // UTF-8 (the in-place decoder must refuse what prost refuses).
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&write_body(&[(
                &[("__name__", "x"), ("job", "utf8")],
                &[(now, 1.0)],
            )]))
            .unwrap();
        let snappy = |b: &[u8]| snap::raw::Encoder::new().compress_vec(b).unwrap();
        let mut not_utf8 = raw.clone();
        let at = raw.windows(4).position(|w| w == b"utf8").unwrap();
        not_utf8[at] = 0xc3;
        for (what, body) in [
            ("truncated protobuf", snappy(&raw[..raw.len() - 3])),
            ("label value not UTF-8", snappy(&not_utf8)),
            ("not snappy", b"definitely not snappy".to_vec()),
            (
                "not protobuf",
                snap::raw::Encoder::new().compress_vec(&[0xff; 40]).unwrap(),
            ),
            (
                "bad label name",
                write_body(&[(&[("__name__", "x"), ("bad-name", "1")], &[(now, 1.0)])]),
            ),
            (
                "no metric name",
                write_body(&[(&[("job", "a")], &[(now, 1.0)])]),
            ),
            (
                "duplicate label",
                write_body(&[(&[("__name__", "x"), ("a", "1"), ("a", "2")], &[(now, 1.0)])]),
            ),
            (
                "a label value over --max-label-value-bytes (4096)",
                write_body(&[(
                    &[("__name__", "x"), ("a", &"v".repeat(4097))],
                    &[(now, 1.0)],
                )]),
            ),
        ] {
            let (code, text) = send(&url, &body);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (code, v["errorType"].as_str()),
                (400, Some("bad_data")),
                "{what}: {text}"
            );
            assert_eq!(stored(), before, "{what} changed stored data");
        }
        // Out of order: refused and reported, not retried by senders.
        let old = write_body(&[(
            &[("__name__", "rw_metric"), ("job", "a")],
            &[(now - 5000, 9.0)],
        )]);
        let (code, text) = send(&url, &old);
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("1 out of order"), "{text}");
        assert_eq!(stored(), before);
        "ok"
    })
    .await
    .unwrap();
    assert_eq!(out, "ok");
    c.stop().await;
}

/// Stores `m{i="0".."n"}` with samples every 10 s from 1000 s to 1100 s, value i * t.
fn load_m(store: &kappie_storage::Storage, n: usize) {
    let mut a = store.appender();
    for i in 0..n {
        let l = Labels::new([("__name__", "m".to_string()), ("i", i.to_string())]).unwrap();
        for t in (1_000..=1_100).step_by(10) {
            a.append(&l, t * 1000, (i as i64 * t) as f64).unwrap();
        }
    }
    a.append(
        &Labels::new([("__name__", "odd"), ("k", "nan")]).unwrap(),
        1_100_000,
        f64::NAN,
    )
    .unwrap();
    a.append(
        &Labels::new([("__name__", "odd"), ("k", "inf")]).unwrap(),
        1_100_000,
        f64::INFINITY,
    )
    .unwrap();
    a.commit().unwrap();
}

#[tokio::test]
async fn query_and_query_range_shapes_methods_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    load_m(&c.running.as_ref().unwrap().store, 2);
    let base = c.http_url();
    tokio::task::spawn_blocking(move || {
        let q = format!("{base}/api/v1/query");
        let r = format!("{base}/api/v1/query_range");

        // Grafana's health check: a scalar.
        let (code, v) = get(&format!(
            "{q}?{}",
            qs(&[("query", "1+1"), ("time", "1000")])
        ));
        assert_eq!(code, 200);
        assert_eq!(
            v,
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1000, "2"]}})
        );

        // Instant vector, GET and form POST alike; values are strings, NaN and +Inf too.
        let params = [("query", "m{i=\"1\"}"), ("time", "1050.5")];
        let (code, got) = get(&format!("{q}?{}", qs(&params)));
        assert_eq!(code, 200);
        assert_eq!(
            got["data"],
            json!({"resultType": "vector", "result": [
                {"metric": {"__name__": "m", "i": "1"}, "value": [1050.5, "1050"]}
            ]})
        );
        assert_eq!(post(&q, &params), (200, got));
        let (_, v) = get(&format!(
            "{q}?{}",
            qs(&[("query", "sort(odd)"), ("time", "1100")])
        ));
        assert_eq!(v["data"]["result"][0]["value"][1], "+Inf", "{v}");
        assert_eq!(v["data"]["result"][1]["value"][1], "NaN", "{v}");

        // Range vector from an instant query: raw samples.
        let (_, v) = get(&format!(
            "{q}?{}",
            qs(&[("query", "m{i=\"1\"}[20s]"), ("time", "1100")])
        ));
        assert_eq!(v["data"]["resultType"], "matrix");
        assert_eq!(
            v["data"]["result"][0]["values"],
            json!([[1080, "1080"], [1090, "1090"], [1100, "1100"]])
        );

        // String literal.
        let (_, v) = get(&format!(
            "{q}?{}",
            qs(&[("query", "\"hi\""), ("time", "5")])
        ));
        assert_eq!(
            v["data"],
            json!({"resultType": "string", "result": [5, "hi"]})
        );

        // Range query, GET and POST, step as seconds or as a duration.
        let params = [
            ("query", "sum(m)"),
            ("start", "1000"),
            ("end", "1020"),
            ("step", "10s"),
        ];
        let (code, got) = get(&format!("{r}?{}", qs(&params)));
        assert_eq!(code, 200, "{got}");
        assert_eq!(
            got["data"],
            json!({"resultType": "matrix", "result": [
                {"metric": {}, "values": [[1000, "1000"], [1010, "1010"], [1020, "1020"]]}
            ]})
        );
        assert_eq!(post(&r, &params), (200, got.clone()));
        let mut secs = params;
        secs[3] = ("step", "10");
        assert_eq!(get(&format!("{r}?{}", qs(&secs))), (200, got));

        // Errors: Prometheus's types and status codes.
        let bad = |url: &str, p: &[(&str, &str)], code: u16, ty: &str, msg: &str| {
            let (c, v) = get(&format!("{url}?{}", qs(p)));
            assert_eq!(
                (c, v["status"].as_str(), v["errorType"].as_str()),
                (code, Some("error"), Some(ty)),
                "{p:?}: {v}"
            );
            assert!(v["error"].as_str().unwrap().contains(msg), "{p:?}: {v}");
            let (c2, v2) = post(url, p);
            assert_eq!((c2, &v2), (c, &v), "POST {p:?}");
        };
        bad(
            &q,
            &[("query", "")],
            400,
            "bad_data",
            "query must not be empty",
        );
        bad(
            &q,
            &[("query", "sum(")],
            400,
            "bad_data",
            "invalid parameter \"query\"",
        );
        bad(
            &q,
            &[("query", "m"), ("time", "later")],
            400,
            "bad_data",
            "invalid parameter \"time\"",
        );
        bad(
            &q,
            &[("query", "m{i=~\"(\"}")],
            400,
            "bad_data",
            "invalid parameter \"query\"",
        );
        bad(
            &q,
            &[("query", "m + ignoring(i) m"), ("time", "1050")],
            422,
            "execution",
            "many-to-many matching not allowed",
        );
        bad(
            &q,
            &[
                ("query", "label_replace(m, \"1x\", \"\", \"i\", \"\")"),
                ("time", "1050"),
            ],
            422,
            "execution",
            "invalid destination label name",
        );
        bad(
            &r,
            &[("query", "m"), ("end", "10"), ("step", "1")],
            400,
            "bad_data",
            "invalid parameter \"start\"",
        );
        bad(
            &r,
            &[("query", "m"), ("start", "10"), ("end", "5"), ("step", "1")],
            400,
            "bad_data",
            "end timestamp must not be before start time",
        );
        bad(
            &r,
            &[("query", "m"), ("start", "0"), ("end", "5"), ("step", "x")],
            400,
            "bad_data",
            "invalid parameter \"step\"",
        );
        bad(
            &r,
            &[("query", "m"), ("start", "0"), ("end", "5"), ("step", "0")],
            400,
            "bad_data",
            "zero or negative query resolution step",
        );
        bad(
            &r,
            &[
                ("query", "m"),
                ("start", "0"),
                ("end", "20000"),
                ("step", "1"),
            ],
            400,
            "bad_data",
            "exceeded maximum resolution of 11,000 points",
        );
        bad(
            &r,
            &[
                ("query", "m[1m]"),
                ("start", "0"),
                ("end", "5"),
                ("step", "1"),
            ],
            400,
            "bad_data",
            "invalid expression type \"range vector\" for range query",
        );

        // Every evaluated query is timed in /metrics (parameter errors are refused before).
        let text = ureq::get(&format!("{base}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let count = |kind: &str| -> u64 {
            let prefix = format!("kappie_query_duration_seconds_count{{kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(count("instant") >= 10, "{text}");
        assert!(count("range") >= 4, "{text}");
        assert!(text.contains("kappie_query_duration_seconds_bucket{kind=\"range\",le=\"+Inf\"}"));
    })
    .await
    .unwrap();
    c.stop().await;
}

#[tokio::test]
async fn query_limits_answer_like_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let config = kappie_collector::Config {
        data_dir: dir.path().to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        query_max_samples: 30,
        query_max_series: 2,
        self_scrape_interval_seconds: 0,
        ..kappie_collector::Config::default()
    };
    let c = InProcess::start_with(config).await;
    load_m(&c.running.as_ref().unwrap().store, 3);
    let base = c.http_url();
    tokio::task::spawn_blocking(move || {
        let q = format!("{base}/api/v1/query");
        // 3 series x 11 samples loaded > 30.
        let (code, v) = get(&format!(
            "{q}?{}",
            qs(&[("query", "sum(m)"), ("time", "1100")])
        ));
        assert_eq!(
            (code, v["errorType"].as_str()),
            (422, Some("execution")),
            "{v}"
        );
        assert_eq!(
            v["error"],
            "query processing would load too many samples into memory in query execution"
        );
        // Within the sample limit, but 3 series returned > 2.
        let (code, v) = get(&format!(
            "{q}?{}",
            qs(&[
                ("query", "m{i!=\"0\"} or m{i=\"0\"} @ 1000"),
                ("time", "1000")
            ])
        ));
        assert_eq!(
            (code, v["errorType"].as_str()),
            (422, Some("execution")),
            "{v}"
        );
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("more than the limit of 2"),
            "{v}"
        );
        // Under both limits the query answers.
        let (code, v) = get(&format!(
            "{q}?{}",
            qs(&[("query", "m{i=\"1\"}"), ("time", "1100")])
        ));
        assert_eq!(code, 200, "{v}");
        // A timeout shorter than any evaluation: 503 timeout.
        let (code, v) = get(&format!(
            "{q}?{}",
            qs(&[
                ("query", "m{i=\"1\"}"),
                ("time", "1100"),
                ("timeout", "0.000001")
            ])
        ));
        assert_eq!(
            (code, v["errorType"].as_str()),
            (503, Some("timeout")),
            "{v}"
        );
    })
    .await
    .unwrap();
    c.stop().await;
}

/// Issue 16: `1+1+…+1` with 5,000 terms aborted the process (a stack overflow between
/// parsing, evaluation and dropping the tree). Such queries answer now, on every endpoint
/// that parses PromQL, and past `--query-max-tokens` they get a clear 400.
#[tokio::test]
async fn deeply_nested_queries_answer_and_never_take_the_collector_down() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    load_m(&c.running.as_ref().unwrap().store, 3);
    let base = c.http_url();
    tokio::task::spawn_blocking(move || {
        let chain = |term: &str, n: usize| vec![term; n].join("+");
        let (code, v) = post(
            &format!("{base}/api/v1/query"),
            &[("query", &chain("1", 5_000)), ("time", "1000")],
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["data"]["result"][1], "5000");
        // Nested the other way, and a range query over series.
        let right = format!("{}1{}", "1+(".repeat(3_000), ")".repeat(3_000));
        let (code, v) = post(
            &format!("{base}/api/v1/query"),
            &[("query", &right), ("time", "1000")],
        );
        assert_eq!(
            (code, &v["data"]["result"][1]),
            (200, &json!("3001")),
            "{v}"
        );
        let (code, v) = post(
            &format!("{base}/api/v1/query_range"),
            &[
                ("query", &chain("m{i=\"1\"}", 2_000)),
                ("start", "1000"),
                ("end", "1100"),
                ("step", "50"),
            ],
        );
        assert_eq!(code, 200, "{v}");
        let points = v["data"]["result"][0]["values"].as_array().unwrap().clone();
        assert_eq!(points.len(), 3, "{v}");
        // The deepest chain the default limit lets through answers too (the stack of the
        // query thread is sized for it).
        let (code, v) = post(
            &format!("{base}/api/v1/query"),
            &[("query", &chain("1", 9_999)), ("time", "1000")],
        );
        assert_eq!(
            (code, &v["data"]["result"][1]),
            (200, &json!("9999")),
            "{v}"
        );
        // Past the token limit (10,001 terms are 20,001 tokens): 400 with what to do.
        let (code, v) = post(
            &format!("{base}/api/v1/query"),
            &[("query", &chain("1", 10_001))],
        );
        assert_eq!(
            (code, v["errorType"].as_str()),
            (400, Some("bad_data")),
            "{v}"
        );
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("more than the limit of 20000") && msg.contains("--query-max-tokens"),
            "{msg}"
        );
        // A match[] may be any text: a deep one is refused, not a crash.
        let (code, v) = post(
            &format!("{base}/api/v1/series"),
            &[("match[]", &chain("1", 5_000))],
        );
        assert_eq!(
            (code, v["errorType"].as_str()),
            (400, Some("bad_data")),
            "{v}"
        );
        let (code, v) = post(
            &format!("{base}/api/v1/labels"),
            &[("match[]", &chain("m", 10_001))],
        );
        assert_eq!(code, 400, "{v}");
        // Still serving.
        let (code, v) = get(&format!("{base}/api/v1/query?query=1%2B1"));
        assert_eq!((code, &v["data"]["result"][1]), (200, &json!("2")));
    })
    .await
    .unwrap();
    c.stop().await;
}

/// Found by the fuzz target promql (fuzz/regressions/promql/): promql-parser panics on a
/// duration too large for `std::time::Duration` (`x[1e400]`), which answered 500 from a
/// failed worker. It is an invalid query: 400 `bad_data`, on every endpoint that parses.
#[tokio::test]
async fn a_query_the_parser_panics_on_gets_400() {
    let dir = tempfile::tempdir().unwrap();
    let c = InProcess::start(dir.path()).await;
    let base = c.http_url();
    tokio::task::spawn_blocking(move || {
        for (path, param) in [
            ("query", "query"),
            ("query_range", "query"),
            ("series", "match[]"),
        ] {
            let (code, v) = post(
                &format!("{base}/api/v1/{path}"),
                &[
                    (param, "x[1e400]"),
                    ("start", "1000"),
                    ("end", "1100"),
                    ("step", "50"),
                ],
            );
            assert_eq!(
                (code, v["errorType"].as_str()),
                (400, Some("bad_data")),
                "{path}: {v}"
            );
        }
    })
    .await
    .unwrap();
    c.stop().await;
}
