//! Runs the PromQL test files in `tests/promql/*.test` against Kappie's engine over a real
//! store, and the same files against a real Prometheus 2.42, so every expected value in
//! them is one Prometheus agrees with.
//!
//! Format (the shape of Prometheus's promqltest):
//! ```text
//! load 1m                                  # samples at 0, 1m, 2m, ...
//!   metric{l="v"} 0+10x20 _ 5 stale        # a+bxN expands to N+1 values; _ is a gap
//! eval instant at 10m rate(metric[5m])
//!   {l="v"} 0.16666666666666666
//! eval range from 0 to 10m step 5m sum(metric)
//!   {} 0 50 _
//! eval_ordered instant at 5m sort(metric)   # result order must match too
//! eval_fail instant at 0 label_replace(metric, "1x", "", "", "")
//! ```
//! A scalar result is expected as a line with just the number.

use kappie_collector::promql::{self, QueryLimits, Value};
use kappie_storage::{Appender, Labels, Storage, StorageConfig, STALE_NAN_BITS};
use kappie_testkit::prometheus::{self as prom, Prometheus};
use std::collections::BTreeMap;
use std::path::Path;

type LabelMap = BTreeMap<String, String>;

/// One expected or actual series: labels and a value per step (`None`: no point).
type Rows = Vec<(LabelMap, Vec<Option<f64>>)>;

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Scalar(f64),
    Rows(Rows),
    Failed(String),
}

#[derive(Debug)]
enum Kind {
    Instant { t: i64 },
    Range { start: i64, end: i64, step: i64 },
}

#[derive(Debug)]
struct Case {
    line: usize,
    kind: Kind,
    expr: String,
    ordered: bool,
    fail: bool,
    expected: Vec<String>,
}

#[derive(Debug, Default)]
struct TestFile {
    /// Label set and `(ms, value)` samples of every loaded series.
    series: Vec<(LabelMap, Vec<(i64, f64)>)>,
    cases: Vec<Case>,
}

fn parse_time(s: &str) -> i64 {
    if let Ok(f) = s.parse::<f64>() {
        return (f * 1000.0).round() as i64;
    }
    promql_parser::util::duration::parse_duration(s)
        .unwrap_or_else(|e| panic!("bad duration {s:?}: {e}"))
        .as_millis() as i64
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Inf" | "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "stale" => Some(f64::from_bits(STALE_NAN_BITS)),
        _ => s.parse().ok(),
    }
}

/// Expands value notation: numbers, `_` (gap), `_xN`, `a+bxN`, `a-bxN`, `axN`.
fn expand_values(tokens: &[&str]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for tok in tokens {
        if *tok == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            out.extend(std::iter::repeat_n(None, n.parse::<usize>().expect("_xN")));
            continue;
        }
        if let Some(v) = parse_number(tok) {
            out.push(Some(v));
            continue;
        }
        let (head, times) = tok
            .rsplit_once('x')
            .unwrap_or_else(|| panic!("bad value {tok:?}"));
        let times: usize = times
            .parse()
            .unwrap_or_else(|_| panic!("bad value {tok:?}"));
        // Split `a+b` / `a-b` at the sign that is not the leading one or an exponent's.
        let b = head.as_bytes();
        let split = (1..b.len())
            .rev()
            .find(|&i| (b[i] == b'+' || b[i] == b'-') && !matches!(b[i - 1], b'e' | b'E'));
        let (a, step) = match split {
            Some(i) => (
                parse_number(&head[..i]).expect("start value"),
                parse_number(&head[i..]).expect("step value"),
            ),
            None => (parse_number(head).expect("value"), 0.0),
        };
        for j in 0..=times {
            out.push(Some(a + step * j as f64));
        }
    }
    out
}

/// Splits `name{a="1", b="2"} rest` into labels and the rest of the line.
fn parse_series(line: &str) -> (LabelMap, &str) {
    let mut labels = LabelMap::new();
    let line = line.trim();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    if name_end > 0 {
        labels.insert("__name__".into(), line[..name_end].to_owned());
    }
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut name = String::new();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = i + 1;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    assert_eq!(chars.next().map(|x| x.1), Some('"'), "label value quote");
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|x| x.1) {
                                Some('n') => value.push('\n'),
                                Some(o) => value.push(o),
                                None => {}
                            },
                            '"' => break,
                            o => value.push(o),
                        }
                    }
                    labels.insert(std::mem::take(&mut name), value);
                }
                o => name.push(o),
            }
        }
        rest = &body[end..];
    }
    (labels, rest.trim())
}

fn parse_file(text: &str) -> TestFile {
    let mut f = TestFile::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        i += 1;
        let header_line = i;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let body: Vec<&str> = {
            let mut b = Vec::new();
            while i < lines.len() && lines[i].starts_with(char::is_whitespace) {
                if !lines[i].trim().is_empty() && !lines[i].trim_start().starts_with('#') {
                    b.push(lines[i].trim());
                }
                i += 1;
            }
            b
        };
        if let Some(interval) = line.strip_prefix("load ") {
            let interval = parse_time(interval.trim());
            for l in body {
                let (labels, rest) = parse_series(l);
                let tokens: Vec<&str> = rest.split_whitespace().collect();
                let samples = expand_values(&tokens)
                    .into_iter()
                    .enumerate()
                    .filter_map(|(j, v)| v.map(|v| (j as i64 * interval, v)))
                    .collect();
                f.series.push((labels, samples));
            }
            continue;
        }
        let (head, ordered, fail) = if let Some(r) = line.strip_prefix("eval_ordered ") {
            (r, true, false)
        } else if let Some(r) = line.strip_prefix("eval_fail ") {
            (r, false, true)
        } else if let Some(r) = line.strip_prefix("eval ") {
            (r, false, false)
        } else {
            panic!("line {i}: unknown command {line:?}");
        };
        let words: Vec<&str> = head.splitn(2, ' ').collect();
        let (kind, expr) = match words[0] {
            "instant" => {
                let r = words[1].strip_prefix("at ").expect("instant at");
                let (t, expr) = r.split_once(' ').expect("instant at <t> <expr>");
                (Kind::Instant { t: parse_time(t) }, expr)
            }
            "range" => {
                let r = words[1].strip_prefix("from ").expect("range from");
                let p: Vec<&str> = r.splitn(6, ' ').collect();
                assert!(
                    p.len() == 6 && p[1] == "to" && p[3] == "step",
                    "line {i}: range syntax"
                );
                (
                    Kind::Range {
                        start: parse_time(p[0]),
                        end: parse_time(p[2]),
                        step: parse_time(p[4]),
                    },
                    p[5],
                )
            }
            other => panic!("line {i}: unknown eval kind {other:?}"),
        };
        f.cases.push(Case {
            line: header_line,
            kind,
            expr: expr.trim().to_owned(),
            ordered,
            fail,
            expected: body.iter().map(|s| s.to_string()).collect(),
        });
    }
    f
}

fn expected_outcome(c: &Case) -> Outcome {
    if c.fail {
        return Outcome::Failed(String::new());
    }
    if c.expected.len() == 1 {
        if let Some(v) = parse_number(c.expected[0].trim()) {
            return Outcome::Scalar(v);
        }
    }
    Outcome::Rows(
        c.expected
            .iter()
            .map(|l| {
                let (labels, rest) = parse_series(l);
                let tokens: Vec<&str> = rest.split_whitespace().collect();
                (labels, expand_values(&tokens))
            })
            .collect(),
    )
}

fn label_map(l: &Labels) -> LabelMap {
    l.iter()
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect()
}

fn kappie_outcome(store: &Storage, c: &Case) -> Outcome {
    let limits = QueryLimits::default();
    let r = match c.kind {
        Kind::Instant { t } => promql::instant_query(store, &c.expr, t, &limits),
        Kind::Range { start, end, step } => {
            promql::range_query(store, &c.expr, start, end, step, &limits)
        }
    };
    match r {
        Err(e) => Outcome::Failed(e.to_string()),
        Ok(Value::Scalar { v, .. }) => Outcome::Scalar(v),
        Ok(Value::String { v, .. }) => Outcome::Failed(format!("string result {v:?}")),
        Ok(Value::Vector(v)) => Outcome::Rows(
            v.iter()
                .map(|s| (label_map(&s.labels), vec![Some(s.v)]))
                .collect(),
        ),
        Ok(Value::Matrix(m)) => {
            let Kind::Range { start, end, step } = c.kind else {
                return Outcome::Failed("matrix result of an instant query".into());
            };
            let n = ((end - start) / step + 1) as usize;
            Outcome::Rows(
                m.iter()
                    .map(|s| {
                        let mut vals = vec![None; n];
                        for &(t, v) in &s.points {
                            vals[((t - start) / step) as usize] = Some(v);
                        }
                        (label_map(&s.labels), vals)
                    })
                    .collect(),
            )
        }
    }
}

fn json_number(v: &serde_json::Value) -> f64 {
    parse_number(v.as_str().expect("value string")).expect("number")
}

fn json_labels(m: &serde_json::Value) -> LabelMap {
    m.as_object()
        .expect("metric object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Queries Prometheus; `holt_winters` is 2.42's name of `double_exponential_smoothing`.
fn prometheus_outcome(p: &Prometheus, c: &Case) -> Outcome {
    let expr = c
        .expr
        .replace("double_exponential_smoothing", "holt_winters");
    let secs = |ms: i64| format!("{}", ms as f64 / 1000.0);
    let body = match c.kind {
        Kind::Instant { t } => p.get("/api/v1/query", &[("query", &expr), ("time", &secs(t))]),
        Kind::Range { start, end, step } => p.get(
            "/api/v1/query_range",
            &[
                ("query", &expr),
                ("start", &secs(start)),
                ("end", &secs(end)),
                ("step", &secs(step)),
            ],
        ),
    };
    if body["status"] != "success" {
        return Outcome::Failed(body["error"].as_str().unwrap_or_default().to_owned());
    }
    let data = &body["data"];
    match data["resultType"].as_str() {
        Some("scalar") => Outcome::Scalar(json_number(&data["result"][1])),
        Some("vector") => Outcome::Rows(
            data["result"]
                .as_array()
                .expect("result")
                .iter()
                .map(|s| {
                    (
                        json_labels(&s["metric"]),
                        vec![Some(json_number(&s["value"][1]))],
                    )
                })
                .collect(),
        ),
        Some("matrix") => {
            let Kind::Range { start, end, step } = c.kind else {
                return Outcome::Failed("matrix result of an instant query".into());
            };
            let n = ((end - start) / step + 1) as usize;
            Outcome::Rows(
                data["result"]
                    .as_array()
                    .expect("result")
                    .iter()
                    .map(|s| {
                        let mut vals = vec![None; n];
                        for p in s["values"].as_array().expect("values") {
                            let t = (p[0].as_f64().expect("time") * 1000.0).round() as i64;
                            vals[((t - start) / step) as usize] = Some(json_number(&p[1]));
                        }
                        (json_labels(&s["metric"]), vals)
                    })
                    .collect(),
            )
        }
        other => Outcome::Failed(format!("result type {other:?}")),
    }
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

fn rows_equal(want: &Rows, got: &Rows, ordered: bool) -> bool {
    if want.len() != got.len() {
        return false;
    }
    let same = |w: &(LabelMap, Vec<Option<f64>>), g: &(LabelMap, Vec<Option<f64>>)| {
        w.0 == g.0
            && w.1.len() == g.1.len()
            && w.1.iter().zip(&g.1).all(|(a, b)| match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => close(*a, *b),
                _ => false,
            })
    };
    if ordered {
        return want.iter().zip(got).all(|(w, g)| same(w, g));
    }
    want.iter().all(|w| got.iter().any(|g| same(w, g)))
}

fn agrees(want: &Outcome, got: &Outcome, ordered: bool) -> bool {
    match (want, got) {
        (Outcome::Failed(_), Outcome::Failed(_)) => true,
        (Outcome::Scalar(a), Outcome::Scalar(b)) => close(*a, *b),
        (Outcome::Rows(a), Outcome::Rows(b)) => rows_equal(a, b, ordered),
        _ => false,
    }
}

fn open_store(dir: &Path, f: &TestFile) -> Storage {
    let cfg = StorageConfig {
        retention_ms: i64::MAX / 4,
        ..StorageConfig::default()
    };
    let store = Storage::open(dir, &cfg).expect("open store");
    let mut app = store.appender();
    for (labels, samples) in &f.series {
        let l = Labels::new(labels.iter().map(|(k, v)| (k.clone(), v.clone()))).expect("labels");
        for &(t, v) in samples {
            app.append(&l, t, v).expect("append");
        }
    }
    let report = app.commit().expect("commit");
    assert_eq!(report.refused(), 0, "store refused test data: {report:?}");
    store
}

fn load_prometheus(p: &Prometheus, f: &TestFile) {
    let series = f
        .series
        .iter()
        .map(|(labels, samples)| {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            prom::series(&l, samples)
        })
        .collect();
    p.write(series)
        .expect("remote write the test data into prometheus");
}

#[test]
fn promql_test_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/promql")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let with_prometheus = prom::required("promql_test_files (Prometheus half)");
    let only = std::env::var("PROMQL_TEST_FILE").ok();
    let mut failures = Vec::new();
    let mut cases = 0;
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let f = parse_file(&std::fs::read_to_string(&path).expect("read test file"));
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = open_store(&tmp.path().join("kappie"), &f);
        let p = with_prometheus.then(|| {
            let p = Prometheus::start(&tmp.path().join("prometheus"), "");
            load_prometheus(&p, &f);
            p
        });
        for c in &f.cases {
            cases += 1;
            let want = expected_outcome(c);
            let got = kappie_outcome(&store, c);
            if !agrees(&want, &got, c.ordered) {
                failures.push(format!(
                    "{name}:{} Kappie: {}\n  want {want:?}\n  got  {got:?}",
                    c.line, c.expr
                ));
            }
            if let Some(p) = &p {
                let peer = prometheus_outcome(p, c);
                if !agrees(&want, &peer, c.ordered) {
                    failures.push(format!(
                        "{name}:{} Prometheus disagrees with the expected value: {}\n  want {want:?}\n  prometheus {peer:?}",
                        c.line, c.expr
                    ));
                }
            }
        }
    }
    assert!(cases > 0, "no cases ran");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{cases} PromQL cases agree (Prometheus checked: {with_prometheus})");
}
