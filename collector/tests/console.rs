//! The web console at `/` (SPEC §3) in a real browser: headless Chromium driven over the
//! DevTools protocol (`console/browser.rs`) loads the console from a real collector and the
//! test reads what the page shows. The views are checked against a real node shipper with
//! eBPF in network namespaces of the test's own (UDP to a closed port makes NO_SOCKET
//! drops, a TCP connection over the veth a remote); the PromQL box, node-name escaping and
//! authentication against an in-process collector fed by remote write.

#[path = "console/browser.rs"]
mod browser;
mod common;
#[path = "console/screenshots.rs"]
mod screenshots;

use browser::Chromium;
use common::InProcess;
use kappie_testkit::need::NETNS;
use kappie_testkit::prometheus::{remote_write, series};
use kappie_testkit::{require, wait_for, Need, Netns, Proc, Veth};
use serde_json::Value;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CHROMIUM: Need = Need::Tool {
    program: "chromium",
    package: "chromium",
};
/// How long a view may take to show what the test waits for.
const VIEW_TIMEOUT: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// JavaScript: the page of the view on screen if it is `view` and done loading, else null.
fn ready_page(view: &str) -> String {
    format!(
        "(() => {{ const p = document.querySelector('#view .page:not(.pending)'); \
         return p && p.dataset.view === '{view}' && p.dataset.state === 'ready' ? p : null; }})()"
    )
}

/// Waits until `view` is drawn; the text it shows.
fn view_text(c: &mut Chromium, view: &str) -> String {
    c.wait_until(
        &format!("the {view} view"),
        VIEW_TIMEOUT,
        &format!(
            "(() => {{ const p = {}; return p ? p.innerText : null; }})()",
            ready_page(view)
        ),
    )
    .as_str()
    .unwrap()
    .to_owned()
}

/// Opens `#<fragment>` and waits until its view is drawn; the text it shows.
fn open(c: &mut Chromium, base: &str, fragment: &str) -> String {
    c.navigate(&format!("{base}/#{fragment}"));
    let view = fragment.split('?').next().unwrap();
    view_text(c, view)
}

/// What the chart titled `title` on the view on screen drew: samples, canvas size, pixels
/// painted and pixels in a series' colour (saturated: the axes, grid and labels are grey),
/// or null until it is drawn.
fn chart(c: &mut Chromium, title: &str) -> Value {
    c.eval(&format!(
        r#"(() => {{
  const card = [...document.querySelectorAll('#view .page:not(.pending) .card')]
    .find((el) => el.querySelector('h2').textContent === {title:?});
  const box = card && card.querySelector('.chart');
  if (!box || box.dataset.state !== 'ready') return box ? {{ state: box.dataset.state, text: box.innerText }} : null;
  const canvas = box.querySelector('canvas');
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let series = 0, painted = 0;
  for (let i = 0; i < d.length; i += 4) {{
    if (d[i + 3] === 0) continue;
    painted++;
    if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80) series++;
  }}
  return {{ state: 'ready', points: +box.dataset.points, width: canvas.width, height: canvas.height, painted, series }};
}})()"#
    ))
}

/// Waits until the chart titled `title` has drawn at least `points` samples, as lines.
fn wait_for_chart(c: &mut Chromium, title: &str, points: u64) -> Value {
    let end = std::time::Instant::now() + VIEW_TIMEOUT;
    loop {
        let v = chart(c, title);
        if v["state"] == "ready"
            && v["points"].as_u64() >= Some(points)
            && v["width"].as_u64() > Some(100)
            && v["height"].as_u64() > Some(100)
            && v["series"].as_u64() >= Some(10)
        {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "chart {title:?} not drawn with {points} samples: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
        // New samples arrive all the time; draw again (the button a user would press).
        c.eval("document.getElementById('refresh').click()");
    }
}

/// Every request the page made went to the collector at `base`.
fn assert_only_local_requests(c: &Chromium, base: &str) {
    assert!(!c.requests.is_empty());
    let foreign: Vec<&String> = c
        .requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{base}/")) && *u != "about:blank")
        .collect();
    assert!(
        foreign.is_empty(),
        "requests off the collector: {foreign:?}"
    );
}

fn assert_no_page_errors(c: &Chromium) {
    assert!(c.errors.is_empty(), "page errors: {:?}", c.errors);
}

/// A node shipper with eBPF on the server end of a veth, the collector beside it, traffic
/// from the client end, and Chromium in the server's namespace.
struct RealNode {
    // Fields drop in this order: the processes before their namespaces.
    _collector: Proc,
    _shipper: Proc,
    _client: Netns,
    server: Netns,
    veth: Veth,
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    traffic: Option<std::thread::JoinHandle<()>>,
    /// A TCP connection from the server to the client: the server's remote.
    _connection: (TcpStream, TcpStream),
    remote_port: u16,
}

const NODE: &str = "console-node";
const HTTP_PORT: u16 = 19190;

impl RealNode {
    fn start() -> RealNode {
        let client = Netns::new("cnc");
        let server = Netns::new("cns");
        let veth = Veth::new(&client, &server, 37);
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = server.command(Path::new(env!("CARGO_BIN_EXE_kappie-collector")));
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http-listen", &format!("127.0.0.1:{HTTP_PORT}")])
            .args(["--grpc-listen", "127.0.0.1:19195"]);
        let collector = Proc::spawn("collector", cmd, &dir.path().join("collector.log"));
        let http = format!("http://127.0.0.1:{HTTP_PORT}");
        wait_for("the collector", Duration::from_secs(30), || {
            server.enter(|| ureq::get(&format!("{http}/-/ready")).call().ok())
        });
        // The shipper mounts bpffs and tracefs in the mount namespace `ip netns exec` gives
        // it; its pins go with that namespace when it exits.
        let mut cmd = server.command(&common::workspace_bin("kappie-shipper"));
        cmd.args(["--collector", "http://127.0.0.1:19195", "--interval", "1s"])
            .args(["--node-name", NODE, "--cluster", "console-test"])
            .args(["--ebpf-interfaces", &veth.b_if])
            .arg("--state-file")
            .arg(dir.path().join("shipper-state.json"))
            .env("RUST_LOG", "info");
        let shipper = Proc::spawn("shipper", cmd, &dir.path().join("shipper.log"));

        let listener = client.enter(|| TcpListener::bind((veth.a_addr4, 0)).unwrap());
        let remote_port = listener.local_addr().unwrap().port();
        let target = (veth.a_addr4, remote_port);
        let outgoing = server.enter(|| TcpStream::connect(target).unwrap());
        let incoming = listener.accept().unwrap().0;

        // Datagrams to a closed port of the server: forwarded in, dropped as NO_SOCKET, and
        // ICMP port unreachable forwarded out.
        let udp = client.enter(|| UdpSocket::bind((veth.a_addr4, 0)).unwrap());
        let to = (veth.b_addr4, 9);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let traffic = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let _ = udp.send_to(&[0u8; 200], to);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RealNode {
            _client: client,
            server,
            veth,
            dir,
            _collector: collector,
            _shipper: shipper,
            stop,
            traffic: Some(traffic),
            _connection: (outgoing, incoming),
            remote_port,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{HTTP_PORT}")
    }

    /// Waits until the collector has the shipper's forward and drop counters, so the page
    /// has something to show.
    fn wait_for_data(&self) {
        let http = self.base();
        let ok = (0..120).any(|_| {
            let has = |q: &str| {
                self.server
                    .enter(|| common::query(&http, q))
                    .pointer("/data/result/0")
                    .is_some()
            };
            let ready = has("kappie_forward_count{direction=\"ingress\"} > 0")
                && has("kappie_drop_count{reason=\"NO_SOCKET\"} > 0")
                && has("kappie_tcp_connection_remote{address!=\"other\"}");
            if !ready {
                std::thread::sleep(Duration::from_millis(500));
            }
            ready
        });
        if !ok {
            let log = std::fs::read_to_string(self.dir.path().join("shipper.log"));
            panic!(
                "no data from the shipper in 60 s; its log:\n{}",
                log.unwrap_or_default()
            );
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.traffic.take() {
            let _ = t.join();
        }
    }
}

fn real_node_needs() -> Vec<Need> {
    [NETNS.as_slice(), &[Need::KernelBtf, CHROMIUM]].concat()
}

#[test]
fn the_views_show_a_real_shippers_node_traffic_drops_and_remotes() {
    if !require(&real_node_needs()) {
        return;
    }
    let node = RealNode::start();
    node.wait_for_data();
    let base = node.base();
    let mut c = Chromium::launch(Some(&node.server), None);

    open(&mut c, &base, "overview?range=15m");
    wait_for_chart(&mut c, "Forwarded bytes/s by direction", 4);
    let text = view_text(&mut c, "overview");
    assert!(text.contains("1 / 1"), "one node reporting: {text}");

    let text = open(&mut c, &base, "nodes?range=15m");
    assert!(text.contains(NODE), "the node in the nodes table: {text}");
    assert!(
        text.contains("console-test") && text.contains(" ago"),
        "{text}"
    );

    let text = open(&mut c, &base, "drops?range=15m");
    assert!(
        text.contains("NO_SOCKET"),
        "the drop reason in the table: {text}"
    );
    wait_for_chart(&mut c, "Drops/s by reason", 2);

    let text = open(&mut c, &base, "remotes?range=15m");
    let remote = node.veth.a_addr4.to_string();
    assert!(
        text.contains(&remote) && text.contains(&node.remote_port.to_string()),
        "the TCP remote {remote}:{} in the table: {text}",
        node.remote_port
    );

    // The node picker offers the node, and picking it keeps the data.
    c.eval(&format!(
        "(() => {{ const s = document.getElementById('node'); s.value = {NODE:?}; \
         s.dispatchEvent(new Event('change')); }})()"
    ));
    let text = view_text(&mut c, "remotes");
    assert!(text.contains(&remote), "{text}");
    assert!(c
        .eval("location.hash")
        .as_str()
        .unwrap()
        .contains("node=console-node"));

    assert_only_local_requests(&c, &base);
    assert_no_page_errors(&c);
}

/// Counters of `nodes` every 10 s over the last 20 minutes, with rates that move.
fn history(nodes: &[&str]) -> Vec<kappie_proto::prometheus::TimeSeries> {
    let now = now_ms();
    let times: Vec<i64> = (0..=120).rev().map(|i| now - i * 10_000).collect();
    let counter = |per_10s: &dyn Fn(usize) -> f64| {
        let mut total = 0.0;
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                total += per_10s(i);
                (t, total)
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let scale = 1.0 + n as f64;
        let wave = move |i: usize| 1.0 + 0.5 * ((i as f64) / 8.0 + n as f64).sin();
        for (direction, bytes) in [("ingress", 40_000.0), ("egress", 25_000.0)] {
            let base = [
                ("node_name", *node),
                ("cluster", "test"),
                ("direction", direction),
            ];
            let with = |name: &'static str| {
                let mut l = vec![("__name__", name)];
                l.extend(base);
                l
            };
            out.push(series(
                &with("kappie_forward_bytes"),
                &counter(&|i| (bytes * scale * wave(i)).round()),
            ));
            out.push(series(
                &with("kappie_forward_count"),
                &counter(&|i| (bytes / 500.0 * scale * wave(i)).round()),
            ));
        }
        for (reason, per_10s) in [("NO_SOCKET", 30.0), ("NETFILTER_DROP", 12.0)] {
            let labels = [
                ("__name__", "kappie_drop_count"),
                ("node_name", *node),
                ("cluster", "test"),
                ("direction", "ingress"),
                ("reason", reason),
            ];
            out.push(series(&labels, &counter(&|i| (per_10s * wave(i)).round())));
        }
    }
    out
}

fn feed(base: &str, nodes: &[&str]) {
    remote_write(&format!("{base}/api/v1/write"), history(nodes)).expect("remote write");
}

async fn in_process_with(
    dir: &Path,
    tweak: impl FnOnce(&mut kappie_collector::Config),
) -> InProcess {
    let mut config = kappie_collector::Config {
        data_dir: dir.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        cache_capacity_bytes: 8 << 20,
        ..kappie_collector::Config::default()
    };
    tweak(&mut config);
    InProcess::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promql_box_draws_a_graph_and_shows_the_error_of_a_bad_query() {
    if !require(&[CHROMIUM]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = InProcess::start(dir.path()).await;
    let base = collector.http_url();
    tokio::task::spawn_blocking(move || {
        feed(&base, &["node-a", "node-b"]);
        let mut c = Chromium::launch(None, None);
        open(&mut c, &base, "query?range=15m");
        let run = |c: &mut Chromium, q: &str| {
            c.eval(&format!(
                "(() => {{ document.getElementById('promql').value = {q:?}; \
                 document.getElementById('run').click(); }})()"
            ));
        };
        run(
            &mut c,
            "sum by (node_name) (rate(kappie_forward_bytes[$__rate_interval]))",
        );
        wait_for_chart(&mut c, "Graph", 20);
        let info = c.eval("document.getElementById('query-info').textContent");
        assert!(
            info.as_str().unwrap().starts_with("2 series, step "),
            "{info}"
        );
        assert!(c.eval("location.hash").as_str().unwrap().contains("q=sum"));
        let step = |info: &Value| -> u64 {
            let s = info.as_str().unwrap();
            s[s.find("step ").unwrap() + 5..]
                .trim_end_matches(" s")
                .parse()
                .unwrap()
        };
        let step_15m = step(&info);
        // The range picker runs the same query over a day, with a step fitting the width.
        c.eval(
            "(() => { const s = document.getElementById('range'); s.value = '24h'; \
             s.dispatchEvent(new Event('change')); })()",
        );
        let info = c.wait_until(
            "the graph over 24 hours",
            VIEW_TIMEOUT,
            &format!(
                "(() => {{ const p = {}; return p && location.hash.includes('range=24h') \
                 ? document.getElementById('query-info').textContent : null; }})()",
                ready_page("query")
            ),
        );
        assert!(
            step(&info) >= 86_400 / 1200 && step(&info) > step_15m,
            "{info} after step {step_15m} s"
        );
        // 20 minutes of history at a 5 minute step: 4 samples of each series.
        wait_for_chart(&mut c, "Graph", 8);

        run(&mut c, "sum(rate(kappie_forward_bytes[5m]");
        let error = c.wait_until(
            "the query's error",
            VIEW_TIMEOUT,
            &format!(
                "(() => {{ const p = {}; const e = p && p.querySelector('.error'); \
                 return e ? e.textContent : null; }})()",
                ready_page("query")
            ),
        );
        let error = error.as_str().unwrap();
        assert!(
            error.starts_with("bad_data: invalid parameter \"query\""),
            "the API's error type and message: {error}"
        );
        assert_only_local_requests(&c, &base);
        assert_no_page_errors(&c);
    })
    .await
    .unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picked_node_name_with_quotes_and_backslashes_is_escaped_in_every_query() {
    if !require(&[CHROMIUM]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let collector = InProcess::start(dir.path()).await;
    let base = collector.http_url();
    tokio::task::spawn_blocking(move || {
        let odd = r#"we"ird\node.*"#;
        feed(&base, &[odd, "node-b"]);
        let mut c = Chromium::launch(None, None);
        open(&mut c, &base, "overview?range=15m");
        c.wait_until(
            "the node picker to offer the odd name",
            VIEW_TIMEOUT,
            &format!(
                "[...document.getElementById('node').options].some((o) => o.value === {odd:?})"
            ),
        );
        c.eval(&format!(
            "(() => {{ const s = document.getElementById('node'); s.value = {odd:?}; \
             s.dispatchEvent(new Event('change')); }})()"
        ));
        for view in ["overview", "drops", "nodes", "remotes"] {
            c.eval(&format!(
                "document.querySelector('#nav a[href^=\"#{view}\"]').click()"
            ));
            let text = view_text(&mut c, view);
            let errors = c.eval(&format!(
                "[...{}.querySelectorAll('.error')].map((e) => e.textContent)",
                ready_page(view)
            ));
            assert_eq!(errors, serde_json::json!([]), "{view}: {text}");
            match view {
                "nodes" => assert!(text.contains(odd) && !text.contains("node-b"), "{text}"),
                "drops" => assert!(text.contains("NO_SOCKET"), "{text}"),
                _ => {}
            }
        }
        // The charts matched the odd node's series.
        c.eval("document.querySelector('#nav a[href^=\"#overview\"]').click()");
        wait_for_chart(&mut c, "Forwarded bytes/s by direction", 20);
        // $node in the query box is the picked node as an escaped regular expression.
        c.eval("document.querySelector('#nav a[href^=\"#query\"]').click()");
        view_text(&mut c, "query");
        c.eval(
            "(() => { document.getElementById('promql').value = \
             'count(kappie_forward_bytes{node_name=~\"$node\"})'; \
             document.getElementById('run').click(); })()",
        );
        wait_for_chart(&mut c, "Graph", 20);
        let info = c.eval("document.getElementById('query-info').textContent");
        assert!(
            info.as_str().unwrap().starts_with("1 series, step "),
            "{info}"
        );
        assert_no_page_errors(&c);
    })
    .await
    .unwrap();
    collector.stop().await;
}

/// Writes history into a collector in `dir` without authentication and starts it again
/// with `tweak` applied (the testkit's remote write sends no credentials).
async fn authenticated_collector(
    dir: &Path,
    tweak: impl FnOnce(&mut kappie_collector::Config),
) -> InProcess {
    let open = InProcess::start(dir).await;
    let base = open.http_url();
    tokio::task::spawn_blocking(move || feed(&base, &["node-a"]))
        .await
        .unwrap();
    open.stop().await;
    in_process_with(dir, tweak).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_basic_auth_the_browser_asks_once_and_the_console_shows_the_data() {
    if !require(&[CHROMIUM]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("ops:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    let collector = authenticated_collector(&dir.path().join("data"), |c| {
        c.http_auth_users_file = Some(users);
    })
    .await;
    let base = collector.http_url();
    tokio::task::spawn_blocking(move || {
        let page = ureq::get(&format!("{base}/"))
            .call()
            .expect("the page is public");
        assert_eq!(page.status(), 200);
        let mut c = Chromium::launch(None, Some(("ops", "pw")));
        let text = open(&mut c, &base, "nodes?range=15m");
        assert!(text.contains("node-a"), "{text}");
        assert_eq!(
            c.auth_prompts, 1,
            "the browser asked once and reused the answer"
        );
        assert!(c
            .eval("document.getElementById('signin') === null")
            .as_bool()
            .unwrap());
        wait_for_chart(&mut c, "Forwarded bytes/s by node", 20);
        assert_no_page_errors(&c);
    })
    .await
    .unwrap();
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_bearer_token_the_console_asks_for_it_and_then_shows_the_data() {
    if !require(&[CHROMIUM]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let collector = authenticated_collector(&dir.path().join("data"), |c| {
        c.http_auth_token_file = Some(token);
    })
    .await;
    let base = collector.http_url();
    tokio::task::spawn_blocking(move || {
        // Credentials at hand: a basic auth prompt would be counted (and answered in vain).
        let mut c = Chromium::launch(None, Some(("ops", "pw")));
        c.navigate(&format!("{base}/#overview?range=15m"));
        c.wait_until(
            "the sign-in form",
            VIEW_TIMEOUT,
            "document.getElementById('token') !== null",
        );
        assert_eq!(c.auth_prompts, 0, "no password prompt for a bearer token");
        c.eval(
            "(() => { document.getElementById('token').value = 't0ken'; \
             document.querySelector('#signin form').requestSubmit(); })()",
        );
        wait_for_chart(&mut c, "Forwarded bytes/s by direction", 20);
        let text = view_text(&mut c, "overview");
        assert!(!text.contains("unauthorized"), "{text}");
        let options = c.eval("[...document.getElementById('node').options].map((o) => o.value)");
        assert_eq!(options, serde_json::json!(["", "node-a"]));
        let footer = c.eval("document.getElementById('status').textContent");
        assert!(
            footer.as_str().unwrap().contains("forget token"),
            "{footer}"
        );
    })
    .await
    .unwrap();
    collector.stop().await;
}

#[tokio::test]
async fn the_console_is_embedded_with_content_types_etags_and_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let collector = InProcess::start(dir.path()).await;
    let base = collector.http_url();
    tokio::task::spawn_blocking(move || {
        for (path, content_type, starts) in [
            ("/", "text/html; charset=utf-8", "<!doctype html>"),
            ("/static/console.js", "text/javascript; charset=utf-8", ""),
            ("/static/console.css", "text/css; charset=utf-8", ".uplot"),
        ] {
            let url = format!("{base}{path}");
            let r = ureq::get(&url).call().unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.header("Content-Type"), Some(content_type), "{path}");
            assert_eq!(r.header("Cache-Control"), Some("no-cache"), "{path}");
            assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
            let etag = r.header("ETag").expect("an ETag").to_owned();
            let csp = r.header("Content-Security-Policy").map(str::to_owned);
            let body = r.into_string().unwrap();
            assert!(body.starts_with(starts), "{path}");
            let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("console/dist");
            let file = if path == "/" {
                "index.html"
            } else {
                &path[8..]
            };
            assert_eq!(
                body,
                std::fs::read_to_string(dist.join(file)).unwrap(),
                "{path} is dist/{file} as built"
            );
            if path == "/" {
                let csp = csp.expect("the page's Content-Security-Policy");
                assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
            }
            let again = ureq::get(&url).set("If-None-Match", &etag).call().unwrap();
            assert_eq!(again.status(), 304, "{path} unchanged");
            assert_eq!(again.header("ETag"), Some(etag.as_str()));
            assert_eq!(again.into_string().unwrap(), "");
            let other = ureq::get(&url)
                .set("If-None-Match", "\"other\"")
                .call()
                .unwrap();
            assert_eq!(other.status(), 200);
        }
        match ureq::get(&format!("{base}/static/missing.js")).call() {
            Err(ureq::Error::Status(404, _)) => {}
            other => panic!("a missing asset: {other:?}"),
        }
    })
    .await
    .unwrap();
    collector.stop().await;
}
