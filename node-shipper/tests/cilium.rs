//! The Cilium dataplane end to end, as processes: a stand-in Cilium agent served by this test
//! on loopback, the real `kappie-shipper` reading it and the real `kappie-collector` it pushes
//! to, in a network namespace of the test's own. The totals at the collector must equal what
//! the agent counted, exactly, through agent restarts, an agent outage and shipper restarts.
//!
//! The stand-in serves `tests/fixtures/cilium_metrics` — an agent's exposition written after
//! Cilium's `pkg/maps/metricsmap` collector and client_golang's text encoder (families and
//! labels sorted by name, HELP and TYPE lines, Go's shortest `%g` values such as
//! `1.287642e+06`, other Cilium and Go runtime families around) — with its forward and drop
//! counters and `cilium_process_start_time_seconds` replaced by the test's own.
//!
//! Needs the collector binary beside the shipper's (`cargo test --workspace` builds both).

use kappie_testkit::need::NETNS;
use kappie_testkit::{require, wait_for, Netns, Proc};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HTTP: &str = "http://127.0.0.1:19190";
const GRPC: &str = "http://127.0.0.1:19195";
const AGENT: &str = "127.0.0.1:19962";
const NODE: &str = "cilium-node";

/// A Cilium drop counter: reason text and direction, as Cilium labels it.
type DropKey = (&'static str, &'static str);

/// The agent's counters: what its `cilium_metrics` map holds.
#[derive(Debug, Clone, Default)]
struct Counters {
    forward: BTreeMap<&'static str, (u64, u64)>,
    drops: BTreeMap<DropKey, (u64, u64)>,
}

/// What the stand-in agent serves.
struct AgentState {
    start_time: f64,
    counters: Counters,
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)`, as client_golang writes sample values: the
/// shortest digits, in exponent form when the exponent is below -4 or at least 6.
fn go_float(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if (-4..6).contains(&exp) {
        return format!("{v}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

impl AgentState {
    /// The exposition: the fixture's families, with the dynamic ones rendered from the state
    /// in the same place and shape.
    fn render(&self) -> String {
        let fixture = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cilium_metrics"
        ))
        .unwrap();
        let mut out = String::new();
        for block in fixture
            .split_inclusive('\n')
            .fold(Vec::<String>::new(), |mut v, l| {
                if l.starts_with("# HELP ") || v.is_empty() {
                    v.push(String::new());
                }
                v.last_mut().unwrap().push_str(l);
                v
            })
        {
            let name = block.split_whitespace().nth(2).unwrap_or_default();
            let head: String = block.lines().take(2).map(|l| format!("{l}\n")).collect();
            let c = &self.counters;
            let rendered = match name {
                "cilium_forward_count_total" | "cilium_forward_bytes_total" => {
                    let mut s = head;
                    for (dir, (n, b)) in &c.forward {
                        let v = if name.contains("count") { n } else { b };
                        s += &format!("{name}{{direction=\"{dir}\"}} {}\n", go_float(*v as f64));
                    }
                    s
                }
                "cilium_drop_count_total" | "cilium_drop_bytes_total" => {
                    let mut s = head;
                    for ((reason, dir), (n, b)) in &c.drops {
                        let v = if name.contains("count") { n } else { b };
                        s += &format!(
                            "{name}{{direction=\"{dir}\",reason=\"{reason}\"}} {}\n",
                            go_float(*v as f64)
                        );
                    }
                    s
                }
                "cilium_process_start_time_seconds" => {
                    format!("{head}{name} {}\n", go_float(self.start_time))
                }
                _ => block,
            };
            out += &rendered;
        }
        out
    }
}

/// The stand-in agent: an HTTP server in the namespace answering every request with the
/// exposition. Stopping it closes its socket (connections are refused until it serves
/// again, on the same port, as a restarted agent would).
struct Agent {
    state: Arc<Mutex<AgentState>>,
    server: Option<(Arc<Mutex<bool>>, std::thread::JoinHandle<()>)>,
}

impl Agent {
    fn new(ns: &Netns) -> Agent {
        let mut a = Agent {
            state: Arc::new(Mutex::new(AgentState {
                start_time: 1717633819.23,
                counters: Counters::default(),
            })),
            server: None,
        };
        a.serve(ns);
        a
    }

    fn serve(&mut self, ns: &Netns) {
        let listener = ns.enter(|| TcpListener::bind(AGENT).expect("bind the agent's port"));
        let stop = Arc::new(Mutex::new(false));
        let (state, stopped) = (self.state.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if *stopped.lock().unwrap() {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = state.lock().unwrap().render();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        self.server = Some((stop, handle));
    }

    /// Stops serving: from now on connections are refused.
    fn stop(&mut self, ns: &Netns) {
        if let Some((stop, handle)) = self.server.take() {
            *stop.lock().unwrap() = true;
            // Wakes the accept loop, which sees the flag and drops the listener.
            let _ = ns.enter(|| TcpStream::connect(AGENT));
            handle.join().unwrap();
        }
        assert!(
            ns.enter(|| TcpStream::connect(AGENT)).is_err(),
            "the agent's port refuses connections"
        );
    }

    /// Counts traffic: adds to the counters (one atomic step between two scrapes).
    fn count(&self, add: &Counters) {
        let mut st = self.state.lock().unwrap();
        add_to(&mut st.counters, add);
    }

    /// A restart of the agent: a new process, and with `new_map` a new `cilium_metrics` map
    /// (its counters from zero), which counts `then` before anyone scrapes it.
    fn restart(&self, new_map: bool, then: &Counters) {
        self.restart_with(new_map, then, || {})
    }

    /// [`Agent::restart`], running `pin` (which replaces the map's pin) in the same step.
    fn restart_with(&self, new_map: bool, then: &Counters, pin: impl FnOnce()) {
        let mut st = self.state.lock().unwrap();
        pin();
        st.start_time += 3600.5;
        if new_map {
            st.counters = Counters::default();
        }
        add_to(&mut st.counters, then);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.server.take() {
            // The accept loop ends at its next connection; the thread is left to the
            // process's exit.
            *stop.lock().unwrap() = true;
        }
    }
}

fn add_to(to: &mut Counters, add: &Counters) {
    for (k, (n, b)) in &add.forward {
        let e = to.forward.entry(k).or_default();
        e.0 += n;
        e.1 += b;
    }
    for (k, (n, b)) in &add.drops {
        let e = to.drops.entry(*k).or_default();
        e.0 += n;
        e.1 += b;
    }
}

/// Traffic of one step; `k` scales it so steps differ.
fn traffic(k: u64) -> Counters {
    Counters {
        forward: BTreeMap::from([
            ("INGRESS", (1_000_003 * k, 1_400_000_017 * k)),
            ("EGRESS", (700 * k, 91_000 * k)),
        ]),
        drops: BTreeMap::from([
            (("Policy denied", "INGRESS"), (40 * k, 2_960 * k)),
            (("CT: Map insertion failed", "INGRESS"), (3 * k, 222 * k)),
            (
                ("LB, sock cgroup: No backend slot entry found", "EGRESS"),
                (k, 74 * k),
            ),
        ]),
    }
}

/// What the collector must hold: Kappie series (metric, labels) → total.
fn expected(total: &Counters) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for (dir, (n, b)) in &total.forward {
        let l = format!("direction=\"{}\"", dir.to_lowercase());
        out.insert(("kappie_forward_count".into(), l.clone()), *n as f64);
        out.insert(("kappie_forward_bytes".into(), l), *b as f64);
    }
    for ((reason, dir), (n, b)) in &total.drops {
        let reason = match *reason {
            "Policy denied" => "POLICY_DENIED",
            "CT: Map insertion failed" => "CT_MAP_INSERTION_FAILED",
            "LB, sock cgroup: No backend slot entry found" => {
                "LB_SOCK_CGROUP_NO_BACKEND_SLOT_ENTRY_FOUND"
            }
            other => panic!("no expected name for {other:?}"),
        };
        let l = format!("reason=\"{reason}\",direction=\"{}\"", dir.to_lowercase());
        out.insert(("kappie_drop_count".into(), l.clone()), *n as f64);
        out.insert(("kappie_drop_bytes".into(), l), *b as f64);
    }
    out
}

fn collector_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_kappie-shipper")).with_file_name("kappie-collector");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p kappie-collector; cargo test --workspace builds it)",
        p.display()
    );
    p
}

fn start_collector(ns: &Netns, dir: &Path) -> Proc {
    let mut cmd = ns.command(&collector_bin());
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--http-listen", "127.0.0.1:19190"])
        .args(["--grpc-listen", "127.0.0.1:19195"])
        .env("KAPPIE_SELF_SCRAPE_INTERVAL_SECONDS", "0");
    let p = Proc::spawn("collector", cmd, &dir.join("collector.log"));
    wait_for("the collector to be ready", Duration::from_secs(30), || {
        ns.enter(|| ureq::get(&format!("{HTTP}/-/ready")).call().ok())
    });
    p
}

fn start_shipper(ns: &Netns, dir: &Path, run: usize, extra: &[&str]) -> Proc {
    let mut cmd = ns.command(Path::new(env!("CARGO_BIN_EXE_kappie-shipper")));
    cmd.args(extra)
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--collector", GRPC, "--interval", "300ms"])
        .args(["--node-name", NODE, "--cluster", "cilium-e2e"])
        .args(["--cilium-metrics-url", &format!("http://{AGENT}/metrics")])
        .arg("--state-file")
        .arg(dir.join("shipper-state.json"))
        .env("RUST_LOG", "info");
    if !extra.contains(&"--ebpf-pin-dir") {
        // The bpffs root (for Cilium's pinned maps) is this pin directory's parent: the
        // test's own, where no Cilium map is.
        cmd.arg("--ebpf-pin-dir").arg(dir.join("bpffs/kappie"));
    }
    Proc::spawn("shipper", cmd, &log(dir, run))
}

fn log(dir: &Path, run: usize) -> PathBuf {
    dir.join(format!("shipper-{run}.log"))
}

fn query(ns: &Netns, q: &str) -> serde_json::Value {
    ns.enter(|| {
        let resp = ureq::get(&format!("{HTTP}/api/v1/query"))
            .query("query", q)
            .call();
        match resp {
            Ok(r) => serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    })
}

/// Every series of `metric` at the collector: labels (without node and cluster, in the
/// order `expected` writes them) → value.
fn totals(ns: &Netns, metric: &str) -> BTreeMap<(String, String), f64> {
    let v = query(ns, &format!("{metric}{{node_name=\"{NODE}\"}}"));
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let m = &s["metric"];
        let labels = match m["reason"].as_str() {
            Some(r) => format!(
                "reason=\"{r}\",direction=\"{}\"",
                m["direction"].as_str().unwrap()
            ),
            None => format!("direction=\"{}\"", m["direction"].as_str().unwrap()),
        };
        let value: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        out.insert((metric.to_owned(), labels), value);
    }
    out
}

fn all_totals(ns: &Netns) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for m in [
        "kappie_forward_count",
        "kappie_forward_bytes",
        "kappie_drop_count",
        "kappie_drop_bytes",
    ] {
        out.extend(totals(ns, m));
    }
    out
}

/// Waits until the collector holds exactly `total`, then until the shipper has collected
/// and pushed several more times, and checks it still does (nothing counted twice later).
fn assert_totals(ns: &Netns, dir: &Path, run: usize, total: &Counters) {
    let want = expected(total);
    let mut last = BTreeMap::new();
    let reached = (0..300).any(|_| {
        last = all_totals(ns);
        if last == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    if !reached {
        let logs = std::fs::read_to_string(log(dir, run)).unwrap_or_default();
        panic!("collector totals\n{last:#?}\nexpected\n{want:#?}\nshipper log:\n{logs}");
    }
    let pushes =
        |ns: &Netns| shipper_metric(ns, dir, run, "kappie_shipper_pushes_total{result=\"ok\"}");
    let p0 = pushes(ns);
    wait_for("three more pushes", Duration::from_secs(30), || {
        (pushes(ns) >= p0 + 3.0).then_some(())
    });
    assert_eq!(all_totals(ns), want, "totals moved after they were reached");
}

/// The shipper's own HTTP address, from its log (`--http-listen 127.0.0.1:0`).
fn shipper_http(dir: &Path, run: usize) -> String {
    wait_for(
        "the shipper's HTTP address",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(log(dir, run)).ok()?;
            let at = text.find("http_listen=")? + "http_listen=".len();
            let addr: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            Some(format!("http://{addr}"))
        },
    )
}

/// One sample of the shipper's own `/metrics` (0 when absent).
fn shipper_metric(ns: &Netns, dir: &Path, run: usize, series: &str) -> f64 {
    let url = format!("{}/metrics", shipper_http(dir, run));
    let text = ns
        .enter(|| ureq::get(&url).call().ok()?.into_string().ok())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn dataplane_series(ns: &Netns, dataplane: &str, reason: &str) -> Option<f64> {
    let v = query(
        ns,
        &format!("kappie_shipper_dataplane{{node_name=\"{NODE}\",dataplane=\"{dataplane}\",reason=\"{reason}\"}}"),
    );
    let r = v["data"]["result"].as_array()?;
    (r.len() == 1).then(|| r[0]["value"][1].as_str()?.parse().ok())?
}

struct Setup {
    ns: Netns,
    dir: tempfile::TempDir,
    _collector: Proc,
    agent: Agent,
}

fn setup(tag: &str) -> Option<Setup> {
    if !require(&NETNS) {
        return None;
    }
    let ns = Netns::new(tag);
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector(&ns, dir.path());
    let agent = Agent::new(&ns);
    Some(Setup {
        ns,
        dir,
        _collector: collector,
        agent,
    })
}

#[test]
fn the_stand_in_agent_writes_values_as_go_does() {
    assert_eq!(go_float(0.0), "0");
    assert_eq!(go_float(171468.0), "171468");
    assert_eq!(go_float(1287642.0), "1.287642e+06");
    assert_eq!(go_float(1e6), "1e+06");
    assert_eq!(go_float(1717633819.23), "1.71763381923e+09");
    assert_eq!(go_float(3.4941e-05), "3.4941e-05");
}

#[test]
fn cilium_counts_reach_the_collector_exactly_with_upper_snake_reasons() {
    let Some(t) = setup("cil") else { return };
    let _shipper = start_shipper(&t.ns, t.dir.path(), 0, &["--dataplane", "cilium"]);
    let mut total = Counters::default();
    for k in 1..=3 {
        t.agent.count(&traffic(k));
        add_to(&mut total, &traffic(k));
        assert_totals(&t.ns, t.dir.path(), 0, &total);
    }
    let v = query(&t.ns, &format!("kappie_drop_count{{node_name=\"{NODE}\"}}"));
    let reasons: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for r in reasons {
        assert!(
            !r.is_empty()
                && !r.starts_with('_')
                && !r.ends_with('_')
                && !r.contains("__")
                && r.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "{r} is not UPPER_SNAKE"
        );
    }
    assert_eq!(dataplane_series(&t.ns, "cilium", "configured"), Some(1.0));
}

/// The hard case for a "below the baseline is a reset" rule: the agent restarts with a new
/// map and counts past the old values before the shipper's next collection. The new process
/// start time tells the reset; nothing is lost.
#[test]
fn an_agent_restart_that_resets_its_counters_neither_loses_nor_doubles() {
    let Some(t) = setup("cilr") else { return };
    let _shipper = start_shipper(&t.ns, t.dir.path(), 0, &["--dataplane", "cilium"]);
    let mut total = Counters::default();
    t.agent.count(&traffic(2));
    add_to(&mut total, &traffic(2));
    assert_totals(&t.ns, t.dir.path(), 0, &total);
    t.agent.restart(true, &traffic(5));
    add_to(&mut total, &traffic(5));
    assert_totals(&t.ns, t.dir.path(), 0, &total);
    // And a restart whose counters stay below the old ones.
    t.agent.restart(true, &traffic(1));
    add_to(&mut total, &traffic(1));
    assert_totals(&t.ns, t.dir.path(), 0, &total);
    let logs = std::fs::read_to_string(log(t.dir.path(), 0)).unwrap();
    assert_eq!(
        logs.matches("counters restarted from zero").count(),
        2,
        "each restart seen once:\n{logs}"
    );
}

#[test]
fn an_agent_outage_is_one_warning_and_counting_resumes() {
    let Some(mut t) = setup("cilo") else { return };
    let _shipper = start_shipper(&t.ns, t.dir.path(), 0, &["--dataplane", "cilium"]);
    let mut total = Counters::default();
    t.agent.count(&traffic(3));
    add_to(&mut total, &traffic(3));
    assert_totals(&t.ns, t.dir.path(), 0, &total);

    t.agent.stop(&t.ns);
    let errors = "kappie_shipper_collection_errors_total{source=\"cilium\"}";
    wait_for("five failed collections", Duration::from_secs(30), || {
        (shipper_metric(&t.ns, t.dir.path(), 0, errors) >= 5.0).then_some(())
    });
    // The agent comes back as a new process with a new map that has counted already.
    t.agent.restart(true, &traffic(4));
    add_to(&mut total, &traffic(4));
    t.agent.serve(&t.ns);
    assert_totals(&t.ns, t.dir.path(), 0, &total);

    let logs = std::fs::read_to_string(log(t.dir.path(), 0)).unwrap();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cilium"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for the outage:\n{logs}");
    assert!(warnings[0].contains("source unavailable") && warnings[0].contains("19962"));
    assert!(logs.contains("source available again"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}

/// A SIGKILLed shipper, while the agent counts on and then restarts with a new map that
/// counts past the old values: the restarted shipper's saved marker tells the reset.
#[test]
fn a_shipper_restart_counts_nothing_twice() {
    let Some(t) = setup("cils") else { return };
    let args = ["--dataplane", "cilium"];
    let shipper = start_shipper(&t.ns, t.dir.path(), 0, &args);
    let mut total = Counters::default();
    t.agent.count(&traffic(2));
    add_to(&mut total, &traffic(2));
    assert_totals(&t.ns, t.dir.path(), 0, &total);

    shipper.kill9();
    t.agent.count(&traffic(1));
    add_to(&mut total, &traffic(1));
    let shipper = start_shipper(&t.ns, t.dir.path(), 1, &args);
    assert_totals(&t.ns, t.dir.path(), 1, &total);

    shipper.kill9();
    t.agent.restart(true, &traffic(6));
    add_to(&mut total, &traffic(6));
    let _shipper = start_shipper(&t.ns, t.dir.path(), 2, &args);
    assert_totals(&t.ns, t.dir.path(), 2, &total);
}

#[test]
fn auto_finds_the_agent_by_its_metrics_endpoint() {
    let Some(t) = setup("cila") else { return };
    let _shipper = start_shipper(&t.ns, t.dir.path(), 0, &["--dataplane", "auto"]);
    let total = traffic(1);
    t.agent.count(&total);
    assert_totals(&t.ns, t.dir.path(), 0, &total);
    assert_eq!(
        dataplane_series(&t.ns, "cilium", "cilium_metrics_endpoint"),
        Some(1.0)
    );
    let logs = std::fs::read_to_string(log(t.dir.path(), 0)).unwrap();
    let chosen: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("dataplane chosen"))
        .collect();
    assert_eq!(chosen.len(), 1, "{logs}");
    assert!(chosen[0].contains("cilium_metrics_endpoint"), "{logs}");
}

/// Cilium's maps pinned under the bpffs root make the node a Cilium node; and while the
/// `cilium_metrics` pin stays, an agent restart continues the counters (Cilium reads them
/// from the pinned map), so nothing is counted again; a new pin is a new map, from zero.
#[test]
fn auto_finds_pinned_cilium_maps_and_a_kept_map_continues_its_counts() {
    let Some(t) = setup("cilm") else { return };
    let root = t.dir.path().join("bpffs");
    let globals = root.join("tc/globals");
    std::fs::create_dir_all(&globals).unwrap();
    std::fs::write(globals.join("cilium_metrics"), "").unwrap();
    std::fs::write(globals.join("cilium_ct4_global"), "").unwrap();
    let pin_dir = root.join("kappie").to_string_lossy().into_owned();
    let _shipper = start_shipper(
        &t.ns,
        t.dir.path(),
        0,
        &["--dataplane", "auto", "--ebpf-pin-dir", &pin_dir],
    );
    let mut total = Counters::default();
    t.agent.count(&traffic(2));
    add_to(&mut total, &traffic(2));
    assert_totals(&t.ns, t.dir.path(), 0, &total);
    assert_eq!(
        dataplane_series(&t.ns, "cilium", "cilium_bpf_maps"),
        Some(1.0)
    );

    // A new agent process that reopened the pinned map: its counters go on.
    t.agent.restart(false, &traffic(1));
    add_to(&mut total, &traffic(1));
    assert_totals(&t.ns, t.dir.path(), 0, &total);

    // A new map (a new pin; made before the old one goes, so it is surely a new inode).
    t.agent.restart_with(true, &traffic(3), || {
        std::fs::write(globals.join("cilium_metrics.new"), "").unwrap();
        std::fs::rename(
            globals.join("cilium_metrics.new"),
            globals.join("cilium_metrics"),
        )
        .unwrap();
    });
    add_to(&mut total, &traffic(3));
    assert_totals(&t.ns, t.dir.path(), 0, &total);
}
