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
        for (what, body) in [
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
