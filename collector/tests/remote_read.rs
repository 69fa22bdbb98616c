//! Remote read: a real Prometheus 2.42 configured with `remote_read` pointing at Kappie
//! answers PromQL over Kappie's data as Kappie does itself; both response types decoded by
//! hand agree with each other and with the store; malformed requests get Prometheus-style
//! errors and change nothing.

mod common;

use common::InProcess;
use kappie_proto::prometheus as pb;
use kappie_testkit::prometheus::{self as prom, Prometheus};
use prost::Message;
use serde_json::Value;

const STEP: i64 = 15_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// 40 counters and 10 gauges over the hour before `end`, with a staleness marker.
fn data(end: i64) -> Vec<pb::TimeSeries> {
    let t0 = end - 3_600_000;
    let mut out = Vec::new();
    for i in 0..40 {
        let (job, inst) = (format!("job-{}", i % 4), format!("i-{i}"));
        let s: Vec<(i64, f64)> = (0..240)
            .map(|k| {
                (
                    t0 + k * STEP,
                    (k * (i + 1)) as f64 + if k > 100 { -50.0 } else { 0.0 },
                )
            })
            .collect();
        out.push(prom::series(
            &[
                ("__name__", "rr_requests_total"),
                ("job", &job),
                ("instance", &inst),
            ],
            &s,
        ));
    }
    for i in 0..10 {
        let mut s: Vec<(i64, f64)> = (0..230)
            .map(|k| (t0 + k * STEP + 333, ((k * 7 + i * 13) % 50) as f64 / 3.0))
            .collect();
        if i == 4 {
            s.push((
                t0 + 230 * STEP,
                f64::from_bits(kappie_storage::STALE_NAN_BITS),
            ));
        }
        out.push(prom::series(
            &[
                ("__name__", "rr_temp"),
                ("zone", if i % 2 == 0 { "a" } else { "b" }),
                ("node", &format!("n{i}")),
            ],
            &s,
        ));
    }
    out
}

const QUERIES: &[&str] = &[
    "rr_requests_total",
    "rr_requests_total{job=~\"job-[12]\", instance!=\"i-5\"}",
    "rate(rr_requests_total[5m])",
    "sum by (job) (increase(rr_requests_total[10m]))",
    "rr_temp",
    "max_over_time(rr_temp{zone!~\"b\"}[10m])",
    "topk(3, rr_temp)",
    "rr_temp offset 20m",
    "avg(rr_temp) by (zone) * on(zone) group_left count by (zone) (rr_temp)",
];

fn results(body: &Value) -> Vec<String> {
    assert_eq!(body["status"], "success", "{body}");
    let mut v: Vec<String> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.sort();
    v
}

fn read_request(queries: Vec<pb::Query>, types: &[pb::read_request::ResponseType]) -> Vec<u8> {
    let req = pb::ReadRequest {
        queries,
        accepted_response_types: types.iter().map(|t| *t as i32).collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

fn query(matchers: &[(pb::label_matcher::Type, &str, &str)], start: i64, end: i64) -> pb::Query {
    pb::Query {
        start_timestamp_ms: start,
        end_timestamp_ms: end,
        matchers: matchers
            .iter()
            .map(|(t, n, v)| pb::LabelMatcher {
                r#type: *t as i32,
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        hints: None,
    }
}

fn post(url: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let r = match ureq::post(url)
        .set("Content-Type", "application/x-protobuf")
        .set("Content-Encoding", "snappy")
        .send_bytes(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let code = r.status();
    let ct = r.header("Content-Type").unwrap_or_default().to_owned();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut out).unwrap();
    (code, ct, out)
}

type SeriesSamples = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

fn labels_of(l: &[pb::Label]) -> Vec<(String, String)> {
    l.iter()
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect()
}

/// SAMPLES response → per query, series with (t, value bits).
fn decode_samples(body: &[u8]) -> Vec<SeriesSamples> {
    let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
    pb::ReadResponse::decode(raw.as_slice())
        .unwrap()
        .results
        .into_iter()
        .map(|r| {
            r.timeseries
                .into_iter()
                .map(|ts| {
                    (
                        labels_of(&ts.labels),
                        ts.samples
                            .iter()
                            .map(|s| (s.timestamp, s.value.to_bits()))
                            .collect(),
                    )
                })
                .collect()
        })
        .collect()
}

/// STREAMED_XOR_CHUNKS response → per query, series with (t, value bits) within the
/// query's range; checks every frame's CRC, size and single series.
fn decode_stream(
    body: &[u8],
    ranges: &[(i64, i64)],
    max_frame: usize,
) -> (Vec<SeriesSamples>, usize) {
    let mut out: Vec<SeriesSamples> = vec![Vec::new(); ranges.len()];
    let mut pos = 0;
    let mut frames = 0;
    while pos < body.len() {
        let (mut len, mut shift) = (0u64, 0);
        loop {
            let b = body[pos];
            pos += 1;
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        let crc = u32::from_be_bytes(body[pos..pos + 4].try_into().unwrap());
        let data = &body[pos + 4..pos + 4 + len as usize];
        assert_eq!(crc32c::crc32c(data), crc, "frame {frames} checksum");
        assert!(
            data.len() <= max_frame + 4096,
            "frame of {} bytes",
            data.len()
        );
        pos += 4 + len as usize;
        frames += 1;
        let resp = pb::ChunkedReadResponse::decode(data).unwrap();
        assert_eq!(resp.chunked_series.len(), 1, "one series per frame");
        let q = resp.query_index as usize;
        let (mint, maxt) = ranges[q];
        let cs = &resp.chunked_series[0];
        let labels = labels_of(&cs.labels);
        let mut samples = Vec::new();
        for c in &cs.chunks {
            assert_eq!(c.r#type, pb::chunk::Encoding::Xor as i32);
            let mut buf = Vec::new();
            kappie_storage::chunkenc::decode_into(&c.data, &mut buf).unwrap();
            assert_eq!(
                (buf[0].0, buf[buf.len() - 1].0),
                (c.min_time_ms, c.max_time_ms)
            );
            samples.extend(
                buf.into_iter()
                    .filter(|(t, _)| *t >= mint && *t <= maxt)
                    .map(|(t, v)| (t, v.to_bits())),
            );
        }
        match out[q].last_mut() {
            Some((l, s)) if *l == labels => s.extend(samples),
            _ => out[q].push((labels, samples)),
        }
    }
    for q in &out {
        let mut sorted = q.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
        sorted.sort();
        assert_eq!(
            sorted,
            q.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            "series sorted"
        );
    }
    (out, frames)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_reads_kappie_through_remote_read() {
    if !prom::required("prometheus_reads_kappie_through_remote_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let end = now_ms() / 60_000 * 60_000;
    // Prometheus 2.42's remote read client accepts only SAMPLES (the test prints what it
    // was served); STREAMED_XOR_CHUNKS is checked by decoding it in the next test.
    {
        let offered = ["STREAMED_XOR_CHUNKS", "SAMPLES"];
        let config = kappie_collector::Config {
            data_dir: dir.path().join("kappie"),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            self_scrape_interval_seconds: 0,
            ..kappie_collector::Config::default()
        };
        let kappie = InProcess::start_with(config).await;
        let kbase = kappie.http_url();
        let pdir = dir.path().join("prometheus");
        tokio::task::spawn_blocking(move || {
            prom::remote_write(&format!("{kbase}/api/v1/write"), data(end)).unwrap();
            let p = Prometheus::start(
                &pdir,
                &format!("remote_read:\n  - url: {kbase}/api/v1/read\n    read_recent: true\n"),
            );
            let t = format!("{}", (end - 60_000) as f64 / 1000.0);
            for q in QUERIES {
                let params = [("query", *q), ("time", t.as_str())];
                let k = results(&prom::get_json(&format!("{kbase}/api/v1/query"), &params));
                let pr = results(&p.get("/api/v1/query", &params));
                assert!(!k.is_empty(), "{q}: no data");
                assert_eq!(k, pr, "{q} (Kappie offering {offered:?})");
                let range = [
                    ("query", *q),
                    ("start", &*format!("{}", (end - 1_800_000) as f64 / 1000.0)),
                    ("end", t.as_str()),
                    ("step", "60"),
                ];
                let k = results(&prom::get_json(
                    &format!("{kbase}/api/v1/query_range"),
                    &range,
                ));
                let pr = results(&p.get("/api/v1/query_range", &range));
                assert_eq!(k, pr, "{q} range (Kappie offering {offered:?})");
            }
            let metrics = ureq::get(&format!("{kbase}/metrics"))
                .call()
                .unwrap()
                .into_string()
                .unwrap();
            let served: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("kappie_remote_read_requests_total{") && !l.ends_with(" 0")
                })
                .collect();
            eprintln!(
                "Prometheus 2.42 as remote read client, Kappie offering {offered:?}: {served:?}"
            );
            assert!(!served.is_empty(), "{metrics}");
        })
        .await
        .unwrap();
        kappie.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn both_response_types_agree_and_bad_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let max_frame = 300;
    let config = kappie_collector::Config {
        data_dir: dir.path().to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        remote_read_max_frame_bytes: max_frame,
        remote_read_max_samples: 5_000,
        self_scrape_interval_seconds: 0,
        ..kappie_collector::Config::default()
    };
    let kappie = InProcess::start_with(config).await;
    let kbase = kappie.http_url();
    let store = kappie.running.as_ref().unwrap().store.clone();
    let end = now_ms() / 60_000 * 60_000;
    tokio::task::spawn_blocking(move || {
        prom::remote_write(&format!("{kbase}/api/v1/write"), data(end)).unwrap();
        let url = format!("{kbase}/api/v1/read");
        use pb::label_matcher::Type::*;
        use pb::read_request::ResponseType::*;
        let ranges = [(end - 1_800_000, end - 600_000), (end - 3_600_000, end)];
        let queries = || {
            vec![
                query(
                    &[
                        (Eq, "__name__", "rr_requests_total"),
                        (Re, "job", "job-[13]"),
                        (Neq, "instance", "i-1"),
                    ],
                    ranges[0].0,
                    ranges[0].1,
                ),
                query(
                    &[(Eq, "__name__", "rr_temp"), (Nre, "zone", "b")],
                    ranges[1].0,
                    ranges[1].1,
                ),
            ]
        };
        let (code, ct, body) = post(&url, &read_request(queries(), &[Samples]));
        assert_eq!((code, ct.as_str()), (200, "application/x-protobuf"));
        let samples = decode_samples(&body);
        assert_eq!(samples[0].len(), 19, "jobs 1 and 3 without i-1");
        assert_eq!(samples[1].len(), 5, "zone a");
        assert!(
            samples[0].iter().all(|s| s.1.len() == 81),
            "20 min at 15 s, both ends"
        );
        // The stale marker comes back as stored.
        assert!(samples[1]
            .iter()
            .any(|s| s.1.iter().any(|x| x.1 == kappie_storage::STALE_NAN_BITS)));

        let (code, ct, body) = post(
            &url,
            &read_request(queries(), &[StreamedXorChunks, Samples]),
        );
        assert_eq!(code, 200);
        assert_eq!(
            ct,
            "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
        );
        let (streamed, frames) = decode_stream(&body, &ranges, max_frame);
        assert_eq!(
            streamed, samples,
            "streamed chunks hold exactly the samples"
        );
        assert!(
            frames > samples[0].len() + samples[1].len(),
            "long series span several frames ({frames})"
        );
        // After compaction (dense chunks re-encoded as XOR for the stream): the same.
        let r = store.maintain(end + 7_200_000).unwrap();
        assert!(r.windows_compacted >= 1, "{r:?}");
        let (_, _, body) = post(&url, &read_request(queries(), &[Samples]));
        assert_eq!(decode_samples(&body), samples, "SAMPLES after compaction");
        let (_, _, body) = post(
            &url,
            &read_request(queries(), &[StreamedXorChunks, Samples]),
        );
        let (streamed, _) = decode_stream(&body, &ranges, max_frame);
        assert_eq!(streamed, samples, "streamed chunks after compaction");
        // No accepted types: SAMPLES, as for old clients.
        let (_, ct, _) = post(&url, &read_request(queries(), &[]));
        assert_eq!(ct, "application/x-protobuf");

        // Bad requests: 400 with a plain-text reason, and the store unchanged.
        let before = prom::get_json(
            &format!("{kbase}/api/v1/query"),
            &[
                ("query", "count_over_time(rr_temp[2h])"),
                ("time", &format!("{}", end as f64 / 1000.0)),
            ],
        );
        let bad = |body: Vec<u8>, want: &str| {
            let (code, ct, text) = post(&url, &body);
            let text = String::from_utf8(text).unwrap();
            assert_eq!(
                (code, ct.as_str()),
                (400, "text/plain; charset=utf-8"),
                "{text}"
            );
            assert!(text.contains(want), "{text}");
        };
        bad(b"not snappy at all".to_vec(), "snappy");
        bad(
            snap::raw::Encoder::new()
                .compress_vec(b"\xff\xff\xff")
                .unwrap(),
            "protobuf",
        );
        bad(
            read_request(vec![query(&[(Re, "job", "(")], 0, end)], &[Samples]),
            "regex",
        );
        bad(
            snap::raw::Encoder::new()
                .compress_vec(
                    &pb::ReadRequest {
                        queries: queries(),
                        accepted_response_types: vec![7],
                    }
                    .encode_to_vec(),
                )
                .unwrap(),
            "server does not support any of the requested response types",
        );
        bad(
            read_request(
                vec![query(&[(Re, "__name__", "rr_.*")], 0, end)],
                &[Samples],
            ),
            "exceeded sample limit (5000)",
        );
        let after = prom::get_json(
            &format!("{kbase}/api/v1/query"),
            &[
                ("query", "count_over_time(rr_temp[2h])"),
                ("time", &format!("{}", end as f64 / 1000.0)),
            ],
        );
        assert_eq!(before, after);
    })
    .await
    .unwrap();
    kappie.stop().await;
}
