//! Remote write out: retry rules and backoff against a loopback server that answers 500,
//! 429 and 400; the three Entra token flows (client secret, workload identity, managed
//! identity), token reuse and refresh, bearer-file reload and
//! basic auth against a loopback token server; and every sample arriving in a real
//! Prometheus 2.42 through a destination outage and a collector restart.

mod common;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::InProcess;
use kappie_collector::remote::auth::AuthConfig;
use kappie_collector::remote::write::DestinationConfig;
use kappie_proto::prometheus as pb;
use kappie_testkit::prometheus::{self as prom, Prometheus};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the fake destination saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    at: Instant,
    auth: Option<String>,
    /// The `X-Scope-OrgID` header (Mimir's tenant), if sent.
    org: Option<String>,
    /// Sample values in the request, in order.
    values: Vec<f64>,
    status: u16,
}

#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
    /// Statuses to answer with, first to last; 200 once empty.
    script: Mutex<Vec<u16>>,
    tokens: Mutex<Vec<String>>,
    /// Client assertions (federated tokens) seen by the token endpoint, in order.
    assertions: Mutex<Vec<String>>,
}

async fn write(
    State(f): State<Arc<Fake>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
    let req = pb::WriteRequest::decode(raw.as_slice()).unwrap();
    let values = req
        .timeseries
        .iter()
        .flat_map(|t| t.samples.iter().map(|s| s.value))
        .collect();
    let status = {
        let mut s = f.script.lock().unwrap();
        if s.is_empty() {
            200
        } else {
            s.remove(0)
        }
    };
    f.seen.lock().unwrap().push(Seen {
        path: name,
        at: Instant::now(),
        auth: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        org: headers
            .get("x-scope-orgid")
            .map(|v| v.to_str().unwrap().to_owned()),
        values,
        status,
    });
    let mut h = HeaderMap::new();
    if status == 429 {
        h.insert("Retry-After", "1".parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), h, "scripted answer")
}

async fn entra_token(
    State(f): State<Arc<Fake>>,
    Path(tenant): Path<String>,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> impl IntoResponse {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let secret = tenant == "tenant-1"
        && get("grant_type") == Some("client_credentials")
        && get("client_id") == Some("app-1")
        && get("client_secret") == Some("s3cret")
        && get("scope") == Some("https://monitor.azure.com/.default");
    // Workload identity: client credentials with the projected token as client assertion.
    let federated = tenant == "wi-tenant"
        && get("grant_type") == Some("client_credentials")
        && get("client_id") == Some("wi-app")
        && get("client_secret").is_none()
        && get("client_assertion_type")
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && get("client_assertion").is_some_and(|a| a.starts_with("sa-token-"))
        && get("scope") == Some("https://monitor.azure.com/.default");
    if federated {
        let a = get("client_assertion").unwrap_or_default().to_owned();
        f.assertions.lock().unwrap().push(a);
        let mut t = f.tokens.lock().unwrap();
        let token = format!(
            "wi-{}",
            t.iter().filter(|x| x.starts_with("wi")).count() + 1
        );
        t.push(token.clone());
        return (
            StatusCode::OK,
            axum::Json(
                serde_json::json!({"token_type": "Bearer", "expires_in": 2, "access_token": token}),
            ),
        );
    }
    if !secret {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid_client", "form": format!("{form:?}")})),
        );
    }
    let mut t = f.tokens.lock().unwrap();
    let token = format!(
        "entra-{}",
        t.iter().filter(|x| x.starts_with("entra")).count() + 1
    );
    t.push(token.clone());
    (
        StatusCode::OK,
        axum::Json(
            serde_json::json!({"token_type": "Bearer", "expires_in": 2, "access_token": token}),
        ),
    )
}

async fn imds_token(
    State(f): State<Arc<Fake>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let ok = headers.get("metadata").is_some_and(|v| v == "true")
        && get("api-version") == Some("2018-02-01")
        && get("resource") == Some("https://monitor.azure.com/")
        && get("client_id") == Some("mi-1");
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "bad request"})),
        );
    }
    let mut t = f.tokens.lock().unwrap();
    let token = format!(
        "mi-{}",
        t.iter().filter(|x| x.starts_with("mi")).count() + 1
    );
    t.push(token.clone());
    // IMDS sends expires_in as a string.
    (
        StatusCode::OK,
        axum::Json(
            serde_json::json!({"token_type": "Bearer", "expires_in": "2", "access_token": token}),
        ),
    )
}

async fn fake_server() -> (Arc<Fake>, String) {
    let f = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/write/{name}", axum::routing::post(write))
        .route(
            "/{tenant}/oauth2/v2.0/token",
            axum::routing::post(entra_token),
        )
        .route(
            "/metadata/identity/oauth2/token",
            axum::routing::get(imds_token),
        )
        .with_state(f.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (f, base)
}

fn config(dir: &std::path::Path, dests: Vec<DestinationConfig>) -> kappie_collector::Config {
    kappie_collector::Config {
        data_dir: dir.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        remote_write: dests,
        self_scrape_interval_seconds: 0,
        ..kappie_collector::Config::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Remote-writes `values` of series `rw_test{k}` into Kappie at consecutive seconds.
async fn put(kbase: &str, k: &str, t0: i64, values: &[f64]) {
    let url = format!("{kbase}/api/v1/write");
    let samples: Vec<(i64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (t0 + i as i64 * 1000, *v))
        .collect();
    let series = prom::series(&[("__name__", "rw_test"), ("k", k)], &samples);
    tokio::task::spawn_blocking(move || prom::remote_write(&url, vec![series]).unwrap())
        .await
        .unwrap();
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks `kappie_remote_write_<name>{destination=dest}` for each `(name, value)`.
fn assert_metrics(text: &str, dest: &str, want: &[(&str, f64)]) {
    for (name, v) in want {
        let got = metric(text, &format!("kappie_remote_write_{name}"), dest);
        assert_eq!(got, *v, "{name} of {dest}:\n{text}");
    }
}

fn metric(text: &str, name: &str, dest: &str) -> f64 {
    let prefix = format!("{name}{{destination=\"{dest}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{prefix} missing"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_5xx_with_backoff_honours_429_and_drops_other_4xx() {
    let (fake, base) = fake_server().await;
    *fake.script.lock().unwrap() = vec![500, 503, 429, 200, 400];
    let dir = tempfile::tempdir().unwrap();
    let dest = DestinationConfig {
        shards: 1,
        min_backoff_ms: 200,
        max_backoff_ms: 400,
        ..DestinationConfig::plain("fake", &format!("{base}/write/fake"))
    };
    let c = InProcess::start_with(config(dir.path(), vec![dest])).await;
    let kbase = c.http_url();
    let t0 = now_ms() - 60_000;
    let seen = |f: &Fake| f.seen.lock().unwrap().clone();

    // Batch A: 500, 503, 429 (Retry-After: 1), then 200.
    put(&kbase, "a", t0, &[1.0, 2.0, 3.0]).await;
    wait_until("batch A delivered", Duration::from_secs(10), || {
        seen(&fake).len() >= 4
    })
    .await;
    let s = seen(&fake);
    assert!(
        s[..4].iter().all(|x| x.values == vec![1.0, 2.0, 3.0]),
        "the same batch is retried: {s:?}"
    );
    assert_eq!(
        s[..4].iter().map(|x| x.status).collect::<Vec<_>>(),
        vec![500, 503, 429, 200]
    );
    let gap = |i: usize| s[i + 1].at - s[i].at;
    // Jittered backoff lies in [d/2, d): 200 ms, then doubled to 400 (the cap).
    assert!(
        gap(0) >= Duration::from_millis(100) && gap(0) < Duration::from_millis(400),
        "{:?}",
        gap(0)
    );
    assert!(gap(1) >= Duration::from_millis(200), "{:?}", gap(1));
    assert!(
        gap(2) >= Duration::from_millis(1000),
        "Retry-After: 1 honoured: {:?}",
        gap(2)
    );

    // Batch B is refused with 400: dropped, never retried. Batch C goes through.
    put(&kbase, "a", t0 + 10_000, &[4.0]).await;
    wait_until("batch B answered", Duration::from_secs(10), || {
        seen(&fake).len() >= 5
    })
    .await;
    put(&kbase, "a", t0 + 20_000, &[5.0, 6.0]).await;
    wait_until("batch C delivered", Duration::from_secs(10), || {
        seen(&fake).len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = seen(&fake);
    assert_eq!(s.len(), 6, "nothing more was sent: {s:?}");
    assert_eq!((s[4].values.clone(), s[4].status), (vec![4.0], 400));
    assert_eq!((s[5].values.clone(), s[5].status), (vec![5.0, 6.0], 200));

    let text = ureq_get(&format!("{kbase}/metrics")).await;
    assert_metrics(
        &text,
        "fake",
        &[
            ("samples_sent_total", 5.0),
            ("samples_dropped_total", 1.0),
            ("samples_failed_total", 6.0),
            ("retries_total", 3.0),
            ("backlog_bytes", 0.0),
            ("lag_seconds", 0.0),
        ],
    );
    // A write the store refuses entirely (out of order) commits nothing: still no backlog.
    let url = format!("{kbase}/api/v1/write");
    let old = prom::series(&[("__name__", "rw_test"), ("k", "a")], &[(t0, 0.5)]);
    let refused = tokio::task::spawn_blocking(move || prom::remote_write(&url, vec![old]))
        .await
        .unwrap();
    assert!(refused.is_err_and(|e| e.contains("400")));
    let text = ureq_get(&format!("{kbase}/metrics")).await;
    assert_metrics(
        &text,
        "fake",
        &[("backlog_bytes", 0.0), ("lag_seconds", 0.0)],
    );
    c.stop().await;
}

async fn ureq_get(url: &str) -> String {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_string().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_managed_identity_bearer_file_and_basic_auth() {
    let (fake, base) = fake_server().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-1\n").unwrap();
    let federated_file = dir.path().join("azure-identity-token");
    std::fs::write(&federated_file, "sa-token-1\n").unwrap();
    let dest = |name: &str, auth: AuthConfig| DestinationConfig {
        auth,
        // One destination also names a Mimir tenant.
        headers: [("X-Scope-OrgID".to_string(), "tenant-a".to_string())]
            .into_iter()
            .filter(|_| name == "basic")
            .collect(),
        ..DestinationConfig::plain(name, &format!("{base}/write/{name}"))
    };
    let dests = vec![
        dest(
            "entra",
            AuthConfig::EntraClientCredentials {
                tenant_id: "tenant-1".into(),
                client_id: "app-1".into(),
                client_secret: Some("s3cret".into()),
                client_secret_file: None,
                scope: "https://monitor.azure.com/.default".into(),
                token_url: Some(format!("{base}/tenant-1/oauth2/v2.0/token")),
            },
        ),
        dest(
            "wi",
            AuthConfig::WorkloadIdentity {
                tenant_id: Some("wi-tenant".into()),
                client_id: Some("wi-app".into()),
                token_file: Some(federated_file.clone()),
                authority_host: Some(format!("{base}/")),
                scope: "https://monitor.azure.com/.default".into(),
                token_url: None,
            },
        ),
        dest(
            "mi",
            AuthConfig::ManagedIdentity {
                client_id: Some("mi-1".into()),
                resource: "https://monitor.azure.com/".into(),
                endpoint: Some(format!("{base}/metadata/identity/oauth2/token")),
            },
        ),
        dest(
            "file",
            AuthConfig::Bearer {
                token_file: token_file.clone(),
            },
        ),
        dest(
            "basic",
            AuthConfig::Basic {
                username: "kappie".into(),
                password: Some("pa:ss".into()),
                password_file: None,
            },
        ),
    ];
    let c = InProcess::start_with(config(dir.path().join("data").as_path(), dests)).await;
    let kbase = c.http_url();
    let t0 = now_ms() - 60_000;
    // A sample every 100 ms for 3 s: tokens live 2 s and are refreshed at 80 %.
    for i in 0..30 {
        put(&kbase, "x", t0 + i * 1000, &[i as f64]).await;
        if i == 3 {
            // The kubelet rotates the projected service account token: after the first
            // token request, long before the first refresh (1.6 s on).
            wait_until("first federated token", Duration::from_secs(10), || {
                !fake.assertions.lock().unwrap().is_empty()
            })
            .await;
            std::fs::write(&federated_file, "sa-token-2\n").unwrap();
        }
        if i == 15 {
            std::fs::write(&token_file, "file-token-2\n").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = |name: &str| {
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == name)
            .flat_map(|s| s.values.clone())
            .count()
    };
    for name in ["entra", "wi", "mi", "file", "basic"] {
        wait_until(name, Duration::from_secs(10), || delivered(name) == 30).await;
    }
    let seen = fake.seen.lock().unwrap().clone();
    let headers = |name: &str| -> Vec<String> {
        seen.iter()
            .filter(|s| s.path == name)
            .map(|s| s.auth.clone().unwrap_or_default())
            .collect()
    };
    for (name, prefix) in [
        ("entra", "Bearer entra-"),
        ("wi", "Bearer wi-"),
        ("mi", "Bearer mi-"),
    ] {
        let h = headers(name);
        assert!(h.iter().all(|x| x.starts_with(prefix)), "{name}: {h:?}");
        let distinct: std::collections::BTreeSet<_> = h.iter().collect();
        // Reused across many requests, refreshed before the 2 s lifetime ran out.
        assert!(h.len() >= 10, "{name}: {} requests", h.len());
        assert!(
            distinct.len() >= 2 && distinct.len() * 3 <= h.len(),
            "{name}: tokens {distinct:?} over {} requests",
            h.len()
        );
        assert_eq!(h[0], format!("{prefix}1"));
    }
    let tokens = fake.tokens.lock().unwrap().clone();
    assert!(
        tokens.len() <= 12,
        "tokens are reused, not fetched per request: {tokens:?}"
    );
    let assertions = fake.assertions.lock().unwrap().clone();
    assert_eq!(assertions.first().map(String::as_str), Some("sa-token-1"));
    assert_eq!(
        assertions.last().map(String::as_str),
        Some("sa-token-2"),
        "the projected token is read again for each token request: {assertions:?}"
    );
    let f = headers("file");
    assert_eq!(f.first().unwrap(), "Bearer file-token-1");
    assert_eq!(
        f.last().unwrap(),
        "Bearer file-token-2",
        "token file read again after it changed"
    );
    let b = headers("basic");
    // base64("kappie:pa:ss")
    assert!(b.iter().all(|x| x == "Basic a2FwcGllOnBhOnNz"), "{b:?}");
    for s in &seen {
        let want = (s.path == "basic").then(|| "tenant-a".to_string());
        assert_eq!(s.org, want, "X-Scope-OrgID to {}", s.path);
    }
    c.stop().await;
}

/// `rw_series{i}` samples `from..to` (index), one every second from `t0`.
fn slice(t0: i64, from: i64, to: i64) -> Vec<pb::TimeSeries> {
    (0..20)
        .map(|i| {
            let s: Vec<(i64, f64)> = (from..to)
                .map(|k| (t0 + k * 1000, (k * 3 + i) as f64))
                .collect();
            prom::series(&[("__name__", "rw_series"), ("i", &i.to_string())], &s)
        })
        .collect()
}

fn count_in(base: &str, at: i64) -> f64 {
    let v = prom::get_json(
        &format!("{base}/api/v1/query"),
        &[
            ("query", "sum(count_over_time(rw_series[1h]))"),
            ("time", &format!("{}", at as f64 / 1000.0)),
        ],
    );
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map_or(0.0, |s| s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sample_reaches_prometheus_through_an_outage_and_a_restart() {
    if !prom::required("every_sample_reaches_prometheus_through_an_outage_and_a_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("prometheus");
    let port = kappie_testkit::prometheus::free_port();
    let url = format!("http://127.0.0.1:{port}/api/v1/write");
    let dest = DestinationConfig {
        min_backoff_ms: 50,
        max_backoff_ms: 500,
        external_labels: [("cluster".to_string(), "test".to_string())].into(),
        ..DestinationConfig::plain("prom", &url)
    };
    let cfg = config(&dir.path().join("kappie"), vec![dest]);
    let t0 = now_ms() / 1000 * 1000 - 30 * 60_000;
    let end = t0 + 20 * 60_000;

    let p = {
        let pdir = pdir.clone();
        tokio::task::spawn_blocking(move || Prometheus::start_on(&pdir, "", port))
            .await
            .unwrap()
    };
    let c = InProcess::start_with(cfg.clone()).await;
    let kbase = c.http_url();
    let w = |kbase: String, series: Vec<pb::TimeSeries>| async move {
        tokio::task::spawn_blocking(move || {
            prom::remote_write(&format!("{kbase}/api/v1/write"), series).unwrap()
        })
        .await
        .unwrap()
    };
    // Phase 1: Prometheus up.
    w(kbase.clone(), slice(t0, 0, 300)).await;
    let pbase = p.base.clone();
    wait_until("phase 1 in Prometheus", Duration::from_secs(20), || {
        count_in(&pbase, end) == 6_000.0
    })
    .await;

    // Phase 2: Prometheus down; Kappie keeps accepting, retries, then restarts.
    drop(p);
    w(kbase.clone(), slice(t0, 300, 600)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = ureq_get(&format!("{kbase}/metrics")).await;
    assert!(
        metric(&text, "kappie_remote_write_backlog_bytes", "prom") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "kappie_remote_write_samples_failed_total", "prom") > 0.0);
    c.stop().await;
    let c = InProcess::start_with(cfg).await;
    let kbase = c.http_url();
    w(kbase.clone(), slice(t0, 600, 900)).await;

    // Phase 3: Prometheus back on the same port and data: everything arrives.
    let p = {
        let pdir = pdir.clone();
        tokio::task::spawn_blocking(move || Prometheus::start_on(&pdir, "", port))
            .await
            .unwrap()
    };
    let pbase = p.base.clone();
    wait_until("all samples in Prometheus", Duration::from_secs(60), || {
        count_in(&pbase, end) >= 18_000.0
    })
    .await;
    assert_eq!(count_in(&pbase, end), 18_000.0, "no sample twice or lost");
    // Same values, and the external label on every series.
    let raw = move |base: &str, q: &str| {
        let v = prom::get_json(
            &format!("{base}/api/v1/query"),
            &[("query", q), ("time", &format!("{}", end as f64 / 1000.0))],
        );
        let mut r: Vec<String> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["values"].to_string())
            .collect();
        r.sort();
        r
    };
    let (kb, pb2) = (kbase.clone(), pbase.clone());
    let (k, pr) = tokio::task::spawn_blocking(move || {
        (
            raw(&kb, "rw_series[1h]"),
            raw(&pb2, "rw_series{cluster=\"test\"}[1h]"),
        )
    })
    .await
    .unwrap();
    assert_eq!(k.len(), 20);
    assert_eq!(k, pr);
    let text = ureq_get(&format!("{kbase}/metrics")).await;
    assert_metrics(
        &text,
        "prom",
        &[("backlog_bytes", 0.0), ("samples_dropped_total", 0.0)],
    );
    c.stop().await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &str| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cd {} && openssl {args}", dir.display()))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args}");
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run(&format!(
        "req -x509 {key} -keyout ca.key -out ca.crt -days 1 -subj /CN=kappie-test-ca"
    ));
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        run(&format!(
            "req {key} -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        run(&format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 1 -extfile {name}.ext"
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_custom_ca_against_prometheus() {
    if !kappie_testkit::require(&[
        kappie_testkit::need::PROMETHEUS,
        kappie_testkit::need::OPENSSL,
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {0}/server.crt\n  key_file: {0}/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {0}/ca.crt\n",
            certs.display()
        ),
    )
    .unwrap();
    let port = kappie_testkit::prometheus::free_port();
    let pdir = dir.path().join("prometheus");
    let _p =
        tokio::task::spawn_blocking(move || Prometheus::start_with(&pdir, "", port, Some(&web)))
            .await
            .unwrap();
    let url = format!("https://127.0.0.1:{port}/api/v1/write");
    let tls = |ca: bool, cert: bool| kappie_collector::remote::write::TlsConfig {
        ca_file: ca.then(|| certs.join("ca.crt")),
        cert_file: cert.then(|| certs.join("client.crt")),
        key_file: cert.then(|| certs.join("client.key")),
    };
    let dest = |name: &str, ca: bool, cert: bool| DestinationConfig {
        tls: tls(ca, cert),
        min_backoff_ms: 50,
        max_backoff_ms: 200,
        // A refused client certificate may only show as a stalled response.
        timeout_seconds: 2,
        ..DestinationConfig::plain(name, &url)
    };
    let c = InProcess::start_with(config(
        &dir.path().join("kappie"),
        vec![
            dest("mtls", true, true),
            dest("nocert", true, false),
            dest("noca", false, true),
        ],
    ))
    .await;
    let kbase = c.http_url();
    put(&kbase, "tls", now_ms() - 60_000, &[1.0, 2.0, 3.0, 4.0]).await;
    let mut text = String::new();
    for _ in 0..600 {
        text = ureq_get(&format!("{kbase}/metrics")).await;
        if metric(&text, "kappie_remote_write_samples_sent_total", "mtls") == 4.0
            && metric(&text, "kappie_remote_write_samples_failed_total", "nocert") > 0.0
            && metric(&text, "kappie_remote_write_samples_failed_total", "noca") > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&text, "kappie_remote_write_samples_sent_total", "mtls"),
        4.0,
        "{text}"
    );
    // Without a client certificate Prometheus refuses the handshake; without the custom CA
    // Kappie refuses Prometheus's certificate. Both keep retrying, nothing is lost.
    for name in ["nocert", "noca"] {
        assert_eq!(
            metric(&text, "kappie_remote_write_samples_sent_total", name),
            0.0
        );
        assert!(
            metric(&text, "kappie_remote_write_samples_failed_total", name) > 0.0,
            "{text}"
        );
        assert!(metric(&text, "kappie_remote_write_backlog_bytes", name) > 0.0);
    }
    c.stop().await;
}
