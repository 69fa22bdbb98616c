//! Differential suite: the same generated data is remote-written into Kappie and into a
//! real Prometheus 2.42 on loopback, and a broad set of instant and range queries must give
//! the same answers through both HTTP APIs (relative tolerance 1e-6, NaN equals NaN, results
//! compared as sets of labelled series, errors compared by type).

mod common;

use common::InProcess;
use kappie_testkit::prometheus::{self as prom, Prometheus};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;

const STEP_MS: i64 = 15_000;
const SAMPLES: i64 = 480; // two hours

/// Counters with resets, histograms, gauges with gaps, NaN and staleness, and info series;
/// timestamps jittered like real scrapes.
fn generate(t0: i64) -> Vec<kappie_proto::prometheus::TimeSeries> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut out = Vec::new();
    let jitter = |rng: &mut rand::rngs::StdRng, i: i64| t0 + i * STEP_MS + rng.gen_range(-400..400);
    for job in ["api", "db", "web"] {
        for inst in 0..4 {
            let inst = inst.to_string();
            for method in ["get", "post"] {
                let mut v: f64 = rng.gen_range(0.0..1000.0);
                let mut s = Vec::new();
                for i in 0..SAMPLES {
                    v += rng.gen_range(0.0..20.0);
                    if rng.gen_bool(0.004) {
                        v = rng.gen_range(0.0..5.0);
                    }
                    s.push((jitter(&mut rng, i), v.round()));
                }
                out.push(prom::series(
                    &[
                        ("__name__", "kt_requests_total"),
                        ("job", job),
                        ("instance", &inst),
                        ("method", method),
                    ],
                    &s,
                ));
            }
            // A classic histogram: cumulative bucket counters.
            let les = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
            let mut counts = [0.0f64; 6];
            let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 6];
            for i in 0..SAMPLES {
                let t = t0 + i * STEP_MS;
                let mut acc = 0.0;
                for (b, c) in counts.iter_mut().enumerate() {
                    acc += rng.gen_range(0.0..(10.0 - b as f64));
                    *c += acc.round();
                    series[b].push((t, *c));
                }
            }
            for (b, le) in les.iter().enumerate() {
                out.push(prom::series(
                    &[
                        ("__name__", "kt_latency_seconds_bucket"),
                        ("job", job),
                        ("instance", &inst),
                        ("le", le),
                    ],
                    &series[b],
                ));
            }
        }
        // Scraped exactly on the 15 s grid, so window edges fall on samples.
        let aligned: Vec<(i64, f64)> = (0..SAMPLES)
            .map(|i| (t0 + i * STEP_MS, (i * (i % 7 + 1)) as f64))
            .collect();
        out.push(prom::series(
            &[("__name__", "kt_aligned_total"), ("job", job)],
            &aligned,
        ));
        let team = match job {
            "api" => "red",
            "db" => "blue",
            _ => "green",
        };
        out.push(prom::series(
            &[("__name__", "kt_info"), ("job", job), ("team", team)],
            &[(t0, 1.0), (t0 + (SAMPLES - 1) * STEP_MS, 1.0)],
        ));
    }
    for node in 0..10 {
        let node = format!("node-{node}");
        let zone = if node.ends_with(['0', '2', '4', '6', '8']) {
            "a"
        } else {
            "b"
        };
        let mut s = Vec::new();
        let mut v: f64 = rng.gen_range(20.0..60.0);
        // Some nodes go away half-way (with a staleness marker), one has a gap, one a NaN.
        let end = if node == "node-3" || node == "node-7" {
            SAMPLES / 2
        } else {
            SAMPLES
        };
        for i in 0..end {
            if node == "node-5" && (100..140).contains(&i) {
                continue;
            }
            v += rng.gen_range(-1.0..1.0);
            let val = if node == "node-9" && i == 200 {
                f64::NAN
            } else {
                v
            };
            s.push((jitter(&mut rng, i), (val * 100.0).round() / 100.0));
        }
        if end < SAMPLES {
            s.push((
                t0 + end * STEP_MS,
                f64::from_bits(kappie_storage::STALE_NAN_BITS),
            ));
        }
        out.push(prom::series(
            &[
                ("__name__", "kt_temperature_celsius"),
                ("node", &node),
                ("zone", zone),
            ],
            &s,
        ));
    }
    out
}

const QUERIES: &[&str] = &[
    // Selectors.
    "kt_requests_total",
    "kt_requests_total{job=\"api\", method!=\"get\"}",
    "kt_requests_total{job=~\"a.*|w.*\", instance!~\"[23]\"}",
    "{__name__=~\"kt_.*\", job=\"db\", method=\"post\"}",
    "kt_temperature_celsius",
    "kt_temperature_celsius offset 10m",
    "kt_temperature_celsius{zone=\"a\"} offset -3m",
    "kt_requests_total{instance=\"1\"} @ end()",
    "kt_requests_total{instance=\"1\"} @ start()",
    "kt_requests_total{job=\"db\"}[2m]",
    "kt_temperature_celsius{node=\"node-1\"}[5m] offset 1m",
    "rate(kt_requests_total[1m:15s])",
    "max_over_time(rate(kt_requests_total{job=\"web\"}[5m])[30m:2m])",
    "kt_temperature_celsius[10m:1m]",
    // Rates and changes.
    "kt_aligned_total",
    "kt_aligned_total offset 4m45s",
    "rate(kt_aligned_total[1m])",
    "increase(kt_aligned_total[2m] offset 15s)",
    "count_over_time(kt_aligned_total[1m])",
    "count_over_time(kt_aligned_total[3m:30s])",
    "rate(kt_requests_total[5m])",
    "rate(kt_requests_total[1m])",
    "irate(kt_requests_total[5m])",
    "increase(kt_requests_total[1h])",
    "delta(kt_temperature_celsius[10m])",
    "idelta(kt_temperature_celsius[2m])",
    "deriv(kt_temperature_celsius[15m])",
    "predict_linear(kt_temperature_celsius[30m], 3600)",
    "resets(kt_requests_total[1h])",
    "changes(kt_temperature_celsius[20m])",
    "double_exponential_smoothing(kt_temperature_celsius[10m], 0.3, 0.6)",
    "rate(kt_requests_total[5m] offset 30m)",
    "rate(kt_requests_total[5m] @ end())",
    // Over time.
    "avg_over_time(kt_temperature_celsius[10m])",
    "min_over_time(kt_temperature_celsius[10m])",
    "max_over_time(kt_temperature_celsius[10m])",
    "sum_over_time(kt_temperature_celsius[10m])",
    "count_over_time(kt_temperature_celsius[10m])",
    "quantile_over_time(0.9, kt_temperature_celsius[30m])",
    "stddev_over_time(kt_temperature_celsius[30m])",
    "stdvar_over_time(kt_temperature_celsius[30m])",
    "last_over_time(kt_temperature_celsius[10m])",
    "present_over_time(kt_temperature_celsius[10m])",
    "absent_over_time(kt_temperature_celsius{node=\"node-3\"}[5m])",
    "absent_over_time(kt_nothing{job=\"x\"}[5m])",
    // Aggregations.
    "sum(rate(kt_requests_total[5m]))",
    "sum by (job) (rate(kt_requests_total[5m]))",
    "sum without (instance) (rate(kt_requests_total[5m]))",
    "avg by (zone) (kt_temperature_celsius)",
    "min by (zone) (kt_temperature_celsius)",
    "max without (node) (kt_temperature_celsius)",
    "count by (job, method) (kt_requests_total)",
    "group by (zone) (kt_temperature_celsius)",
    "stddev by (zone) (kt_temperature_celsius)",
    "stdvar(kt_temperature_celsius)",
    "topk(3, rate(kt_requests_total[5m]))",
    "bottomk by (job) (2, rate(kt_requests_total[5m]))",
    "quantile(0.75, kt_temperature_celsius)",
    "quantile by (zone) (0.5, kt_temperature_celsius)",
    "count_values(\"bucket\", round(kt_temperature_celsius / 10))",
    "count_values by (zone) (\"t\", ceil(kt_temperature_celsius))",
    // Binary operators and matching.
    "kt_requests_total{method=\"get\"} + kt_requests_total{method=\"get\"}",
    "rate(kt_requests_total{method=\"get\"}[5m]) / ignoring(method) rate(kt_requests_total{method=\"post\"}[5m])",
    "sum by (job, instance) (rate(kt_requests_total[5m])) / on(job) group_left sum by (job) (rate(kt_requests_total[5m]))",
    "sum by (job) (rate(kt_requests_total[5m])) * on(job) group_left(team) kt_info",
    "kt_info * on(job) group_right sum by (job, method) (rate(kt_requests_total[5m]))",
    "kt_temperature_celsius > 40",
    "kt_temperature_celsius > bool 40",
    "40 < kt_temperature_celsius",
    "kt_temperature_celsius{zone=\"a\"} and kt_temperature_celsius > 35",
    "kt_temperature_celsius{zone=\"a\"} or kt_temperature_celsius{node=~\"node-[13]\"}",
    "kt_temperature_celsius unless on(zone) kt_temperature_celsius{node=\"node-2\"}",
    "kt_requests_total + on(job) kt_info",
    "kt_temperature_celsius - ignoring(node) kt_temperature_celsius",
    "-kt_temperature_celsius % 7",
    "kt_temperature_celsius ^ 0.5 * 2 - 1",
    "(1 + 2) * 3 / 4",
    "time() - 3600",
    // Functions.
    "abs(-kt_temperature_celsius)",
    "ceil(kt_temperature_celsius) - floor(kt_temperature_celsius)",
    "round(kt_temperature_celsius, 0.5)",
    "clamp(kt_temperature_celsius, 30, 50)",
    "clamp_min(kt_temperature_celsius, 40)",
    "clamp_max(kt_temperature_celsius, 40)",
    "sqrt(kt_temperature_celsius)",
    "exp(kt_temperature_celsius / 100)",
    "ln(kt_temperature_celsius)",
    "log2(kt_temperature_celsius)",
    "log10(kt_temperature_celsius)",
    "sgn(kt_temperature_celsius - 40)",
    "label_replace(kt_temperature_celsius, \"n\", \"$1\", \"node\", \"node-(.*)\")",
    "label_join(kt_info, \"both\", \"/\", \"job\", \"team\")",
    "absent(kt_nothing{job=\"x\", env=~\"p\"})",
    "absent(kt_info)",
    "scalar(sum(kt_info))",
    "vector(scalar(count(kt_temperature_celsius)))",
    "timestamp(kt_temperature_celsius)",
    "sort(kt_temperature_celsius)",
    "sort_desc(rate(kt_requests_total[5m]))",
    "histogram_quantile(0.9, rate(kt_latency_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le, job) (rate(kt_latency_seconds_bucket[10m])))",
    "hour(timestamp(kt_info))",
    "day_of_week()",
    "minute(vector(time()))",
    // Errors.
    "kt_requests_total{job=~\"(\"}",
    "sum(kt_requests_total",
];

/// The parts of an API answer that must agree.
#[derive(Debug)]
enum Answer {
    Error(String),
    Scalar(f64),
    Series(BTreeMap<String, BTreeMap<i64, f64>>),
}

fn num(v: &Value) -> f64 {
    match v.as_str().unwrap_or_default() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().expect("sample value"),
    }
}

fn ms(v: &Value) -> i64 {
    (v.as_f64().expect("timestamp") * 1000.0).round() as i64
}

fn answer(body: &Value) -> Answer {
    if body["status"] != "success" {
        return Answer::Error(body["errorType"].as_str().unwrap_or("?").to_owned());
    }
    let d = &body["data"];
    let mut out = BTreeMap::new();
    match d["resultType"].as_str() {
        Some("scalar") => return Answer::Scalar(num(&d["result"][1])),
        Some("vector") => {
            for s in d["result"].as_array().expect("result") {
                let key = s["metric"].to_string();
                let pts = BTreeMap::from([(ms(&s["value"][0]), num(&s["value"][1]))]);
                assert!(out.insert(key, pts).is_none(), "duplicate series in {body}");
            }
        }
        Some("matrix") => {
            for s in d["result"].as_array().expect("result") {
                let key = s["metric"].to_string();
                let pts = s["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|p| (ms(&p[0]), num(&p[1])))
                    .collect();
                assert!(out.insert(key, pts).is_none(), "duplicate series in {body}");
            }
        }
        other => panic!("result type {other:?}"),
    }
    Answer::Series(out)
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// Why two answers differ, if they do.
fn differ(k: &Answer, p: &Answer) -> Option<String> {
    match (k, p) {
        (Answer::Error(a), Answer::Error(b)) if a == b => None,
        (Answer::Scalar(a), Answer::Scalar(b)) if close(*a, *b) => None,
        (Answer::Series(a), Answer::Series(b)) => {
            let ka: Vec<_> = a.keys().collect();
            let kb: Vec<_> = b.keys().collect();
            if ka != kb {
                let only_k: Vec<_> = ka.iter().filter(|x| !kb.contains(x)).take(3).collect();
                let only_p: Vec<_> = kb.iter().filter(|x| !ka.contains(x)).take(3).collect();
                return Some(format!(
                    "series differ: {} vs {}; only Kappie {only_k:?}; only Prometheus {only_p:?}",
                    ka.len(),
                    kb.len()
                ));
            }
            for (key, pa) in a {
                let pb = &b[key];
                if pa.len() != pb.len() || pa.keys().ne(pb.keys()) {
                    return Some(format!(
                        "{key}: {} points vs {} (times {:?}.. vs {:?}..)",
                        pa.len(),
                        pb.len(),
                        pa.keys().take(3).collect::<Vec<_>>(),
                        pb.keys().take(3).collect::<Vec<_>>()
                    ));
                }
                for ((t, va), vb) in pa.iter().zip(pb.values()) {
                    if !close(*va, *vb) {
                        return Some(format!("{key} at {t}: Kappie {va} vs Prometheus {vb}"));
                    }
                }
            }
            None
        }
        _ => Some(format!("Kappie {k:?} vs Prometheus {p:?}")),
    }
}

fn secs(ms: i64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kappie_answers_like_prometheus() {
    if !prom::required("kappie_answers_like_prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kappie = InProcess::start(&dir.path().join("kappie")).await;
    let kbase = kappie.http_url();
    let pdir = dir.path().join("prometheus");
    let now = common_now();
    // Two hours of data ending 10 minutes ago, aligned to the minute.
    let t0 = (now - SAMPLES * STEP_MS - 600_000) / 60_000 * 60_000;
    let tend = t0 + (SAMPLES - 1) * STEP_MS;
    let store = kappie.running.as_ref().unwrap().store.clone();
    let failures = tokio::task::spawn_blocking(move || {
        let p = Prometheus::start(&pdir, "");
        let data = generate(t0);
        // Prometheus only appends within an hour of its newest sample, so the data goes in
        // ten-minute slices across all series, as a scraping agent would send it.
        let mut from = t0 - 1_000;
        while from <= tend {
            let to = from + 600_000;
            let slice: Vec<_> = data
                .iter()
                .map(|ts| {
                    let mut ts = ts.clone();
                    ts.samples
                        .retain(|x| x.timestamp >= from && x.timestamp < to);
                    ts
                })
                .filter(|ts| !ts.samples.is_empty())
                .collect();
            prom::remote_write(&format!("{kbase}/api/v1/write"), slice.clone())
                .expect("remote write into Kappie");
            p.write(slice).expect("remote write into Prometheus");
            from = to;
        }
        let instants = [
            t0 + 30 * 60_000 + 7_000,
            t0 + 61 * 60_000,
            tend,
            tend + 4 * 60_000,
            tend + 5 * 60_000,
            tend + 6 * 60_000,
        ];
        let ranges = [
            (t0 + 10 * 60_000, tend, 60_000),
            (t0 + 40 * 60_000 + 3_000, t0 + 80 * 60_000, 37_000),
        ];
        let mut failures = Vec::new();
        let mut compared = 0;
        let mut with_data = 0;
        // The same comparisons over the data as written (head and staged chunks), then
        // after compaction has packed every window into dense pages.
        for phase in ["as written", "compacted"] {
            if phase == "compacted" {
                let r = store.maintain(now + 7_200_000).expect("maintenance");
                assert!(r.windows_compacted >= 2, "{r:?}");
            }
            for q in QUERIES {
                let peer_q = q.replace("double_exponential_smoothing", "holt_winters");
                let mut check = |what: String, k: Value, p: Value| {
                    compared += 1;
                    let (ka, pa) = (answer(&k), answer(&p));
                    if matches!(&pa, Answer::Scalar(_))
                        || matches!(&pa, Answer::Series(s) if !s.is_empty())
                    {
                        with_data += 1;
                    }
                    if let Some(d) = differ(&ka, &pa) {
                        failures.push(format!("{q} [{what}, {phase}]: {d}"));
                    }
                };
                for t in instants {
                    let get = |base: &str, q: &str| {
                        prom::get_json(
                            &format!("{base}/api/v1/query"),
                            &[("query", q), ("time", &secs(t))],
                        )
                    };
                    check(
                        format!("instant at t0+{}s", (t - t0) / 1000),
                        get(&kbase, q),
                        get(&p.base, &peer_q),
                    );
                }
                for (s, e, st) in ranges {
                    let get = |base: &str, q: &str| {
                        prom::get_json(
                            &format!("{base}/api/v1/query_range"),
                            &[
                                ("query", q),
                                ("start", &secs(s)),
                                ("end", &secs(e)),
                                ("step", &secs(st)),
                            ],
                        )
                    };
                    check(
                        format!("range step {}s", st / 1000),
                        get(&kbase, q),
                        get(&p.base, &peer_q),
                    );
                }
            }
            failures.extend(compare_metadata_endpoints(&kbase, &p.base, t0, tend));
        }
        eprintln!(
            "{compared} answers compared over {} queries, {with_data} of them with data",
            QUERIES.len()
        );
        // The comparison means something only when most answers hold data.
        assert!(
            with_data * 10 >= compared * 7,
            "only {with_data} of {compared} answers hold data"
        );
        failures
    })
    .await
    .unwrap();
    kappie.stop().await;
    assert!(
        failures.is_empty(),
        "{} answers differ from Prometheus:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

type Params<'a> = Vec<(&'a str, &'a str)>;

/// The JSON's structure with every leaf replaced by its type (arrays by their first
/// element's shape), to compare response shapes without comparing data.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => Value::Null,
    }
}

/// `/series`, `/labels`, `/label/<name>/values` must return the same data as Prometheus;
/// query answers and errors must have the same shape and status code.
fn compare_metadata_endpoints(k: &str, p: &str, t0: i64, tend: i64) -> Vec<String> {
    let (start, end) = (secs(t0), secs(tend));
    let mut failures = Vec::new();
    let sorted = |mut v: Value| {
        if let Some(a) = v["data"].as_array_mut() {
            a.sort_by_key(|x| x.to_string());
        }
        v
    };
    let same_data: &[(&str, Params)] = &[
        (
            "/api/v1/series",
            vec![("match[]", "kt_info"), ("start", &start), ("end", &end)],
        ),
        (
            "/api/v1/series",
            vec![
                ("match[]", "{job=\"db\", __name__=~\"kt_l.*\"}"),
                ("match[]", "kt_aligned_total"),
            ],
        ),
        ("/api/v1/labels", vec![]),
        (
            "/api/v1/labels",
            vec![("match[]", "kt_temperature_celsius")],
        ),
        ("/api/v1/label/job/values", vec![]),
        (
            "/api/v1/label/le/values",
            vec![("match[]", "kt_latency_seconds_bucket{job=\"api\"}")],
        ),
        ("/api/v1/label/__name__/values", vec![]),
        ("/api/v1/label/nothing/values", vec![]),
        // Grafana asks for these; Kappie has no rules, alerts or exemplars, like this peer.
        ("/api/v1/rules", vec![]),
        ("/api/v1/alerts", vec![]),
        (
            "/api/v1/query_exemplars",
            vec![("query", "kt_info"), ("start", &start), ("end", &end)],
        ),
    ];
    for (path, params) in same_data {
        let kv = sorted(prom::get_json(&format!("{k}{path}"), params));
        let pv = sorted(prom::get_json(&format!("{p}{path}"), params));
        if kv != pv {
            failures.push(format!("{path} {params:?}: Kappie {kv} vs Prometheus {pv}"));
        }
    }
    let same_shape: &[(&str, Params, u16)] = &[
        (
            "/api/v1/query",
            vec![("query", "kt_info"), ("time", &end)],
            200,
        ),
        ("/api/v1/query", vec![("query", "1+1")], 200),
        (
            "/api/v1/query",
            vec![("query", "kt_info[5m]"), ("time", &end)],
            200,
        ),
        ("/api/v1/query", vec![("query", "\"s\"")], 200),
        (
            "/api/v1/query_range",
            vec![
                ("query", "kt_info"),
                ("start", &start),
                ("end", &end),
                ("step", "60"),
            ],
            200,
        ),
        ("/api/v1/query", vec![("query", "sum(")], 400),
        (
            "/api/v1/query",
            vec![("query", "kt_info"), ("time", "x")],
            400,
        ),
        (
            "/api/v1/query",
            vec![
                (
                    "query",
                    "kt_requests_total + ignoring(method) kt_requests_total",
                ),
                ("time", &end),
            ],
            422,
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "kt_info"),
                ("start", "10"),
                ("end", "5"),
                ("step", "1"),
            ],
            400,
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "kt_info"),
                ("start", "0"),
                ("end", "50000"),
                ("step", "1"),
            ],
            400,
        ),
        ("/api/v1/series", vec![], 400),
        ("/api/v1/status/buildinfo", vec![], 200),
    ];
    for (path, params, code) in same_shape {
        let status = |base: &str| {
            let mut req = ureq::get(&format!("{base}{path}"));
            for (n, v) in params {
                req = req.query(n, v);
            }
            match req.call() {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(c, _)) => c,
                Err(e) => panic!("{e}"),
            }
        };
        let (kc, pc) = (status(k), status(p));
        let mut kv = prom::get_json(&format!("{k}{path}"), params);
        // Kappie's own version rides along in buildinfo; the rest must match.
        if let Some(d) = kv.get_mut("data").and_then(|d| d.as_object_mut()) {
            d.remove("kappieVersion");
        }
        let kv = shape(&kv);
        let pv = shape(&prom::get_json(&format!("{p}{path}"), params));
        if (kc, &kv) != (pc, &pv) || pc != *code {
            failures.push(format!(
                "{path} {params:?}: Kappie {kc} {kv} vs Prometheus {pc} {pv} (expected {code})"
            ));
        }
    }
    failures
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
