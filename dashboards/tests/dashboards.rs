//! Every dashboard panel and variable returns data, asked as Grafana asks: a collector and a
//! real node shipper (eBPF included) run in a network namespace of the test's own, the test
//! makes traffic (a TCP connection that stays open, UDP to a closed port for NO_SOCKET
//! drops), then takes every target and variable query out of the dashboard JSON, replaces
//! the variables as Grafana does (All as `.*`, and one concrete value, regex-escaped;
//! `$__rate_interval`, `$__interval`, `$__range`), and runs it through the collector's HTTP
//! API: range targets with `query_range`, instant ones with `query`, `label_values(...)`
//! with `/api/v1/label/<name>/values?match[]=`. A panel over a metric the code does not emit
//! comes back empty and fails the test. The dashboards' Grafana conventions that can be
//! checked offline (uids, ids, datasource references, units, descriptions) are checked too.

use kappie_testkit::need::NETNS;
use kappie_testkit::{require, wait_for, Bpffs, Need, Netns, Proc, Veth};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NODE: &str = "dash-node";
const CLUSTER: &str = "dash";
const HTTP: &str = "http://127.0.0.1:19290";

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo test --workspace` builds every binary)",
        p.display()
    );
    p
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Grafana conventions a dashboard must keep, checkable without Grafana.
fn check_conventions(name: &str, d: &Value, uids: &mut BTreeSet<String>) {
    let uid = d["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no uid"));
    assert!(
        uid.len() <= 40 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{name}: uid {uid:?} (≤ 40 characters of [A-Za-z0-9-])"
    );
    assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} used twice");
    assert!(
        d.get("id").is_none() || d["id"].is_null(),
        "{name}: a dashboard id is instance-specific; leave it out"
    );
    assert_eq!(
        d["schemaVersion"], 41,
        "{name}: schemaVersion of Grafana 12"
    );
    assert!(
        d["title"].as_str().unwrap().starts_with("Kappie / "),
        "{name}: title"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap_or_else(|| panic!("{name}: no datasource variable"));
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "{name}: variable {}",
            v["name"]
        );
        if v["name"] == "cluster" || v["name"] == "node" {
            assert_eq!(v["multi"], true, "{name}: {} is multi-select", v["name"]);
            assert_eq!(v["includeAll"], true, "{name}: {} has All", v["name"]);
        }
    }
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{name}: panel id {} twice",
            p["id"]
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{name}/{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}/{title}");
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{name}/{title}: description"
        );
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "{name}/{title}: unit"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{name}/{title}: gridPos"
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{name}/{title}");
            let expr = t["expr"].as_str().unwrap();
            for f in ["rate(", "irate("] {
                if expr.contains(f) {
                    assert!(
                        expr.contains("[$__rate_interval]"),
                        "{name}/{title}: {f} over $__rate_interval: {expr}"
                    );
                }
            }
            if expr.contains("kappie_")
                && !expr.contains("job=\"kappie-collector\"")
                && !expr.contains("kappie_shipper_")
            {
                assert!(
                    expr.contains("node_name=~\"$node\"") && expr.contains("cluster=~\"$cluster\""),
                    "{name}/{title}: node metrics filter by $cluster and $node: {expr}"
                );
            }
        }
    }
}

/// A variable's value as Grafana writes a multi-value variable into a PromQL regex.
fn grafana_regex(values: &[&str]) -> String {
    let esc = |v: &str| {
        let mut o = String::new();
        for c in v.chars() {
            if "\\^$.|?*+()[]{}".contains(c) {
                // Escaped for the regex, and the backslash again for the PromQL string.
                o.push_str("\\\\");
            }
            o.push(c);
        }
        o
    };
    if values.len() == 1 {
        esc(values[0])
    } else {
        format!(
            "({})",
            values.iter().map(|v| esc(v)).collect::<Vec<_>>().join("|")
        )
    }
}

fn interpolate(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    // Longest names first, so `$node` never eats part of `$node_x`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        out = out
            .replace(&format!("${{{n}}}"), &vars[n])
            .replace(&format!("${n}"), &vars[n]);
    }
    assert!(!out.contains('$'), "uninterpolated variable in {out}");
    out
}

fn api(node: &Netns, path: &str, params: &[(&str, &str)]) -> Value {
    node.enter(|| {
        let mut req = ureq::get(&format!("{HTTP}{path}"));
        for (k, v) in params {
            req = req.query(k, v);
        }
        match req.call() {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "{path} {params:?}: HTTP {code}: {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("{path}: {e}"),
        }
    })
}

/// `label_values(selector, label)` or `label_values(label)`, as Grafana's Prometheus
/// datasource asks for it.
fn label_values(node: &Netns, query: &str) -> Vec<String> {
    let re = regex::Regex::new(r"^label_values\((?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)$").unwrap();
    let c = re
        .captures(query)
        .unwrap_or_else(|| panic!("not label_values(): {query}"));
    let label = &c[2];
    let (start, end) = ((now() - 3600.0).to_string(), now().to_string());
    let mut params = vec![("start", start.as_str()), ("end", end.as_str())];
    if let Some(m) = c.get(1) {
        params.push(("match[]", m.as_str()));
    }
    let v = api(node, &format!("/api/v1/label/{label}/values"), &params);
    assert_eq!(v["status"], "success", "{query}: {v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// Runs one target; returns how many series came back with at least one value.
fn run_target(node: &Netns, t: &Value, expr: &str) -> usize {
    let instant = t["instant"] == true;
    let v = if instant {
        let time = now().to_string();
        api(node, "/api/v1/query", &[("query", expr), ("time", &time)])
    } else {
        let (start, end) = ((now() - 600.0).to_string(), now().to_string());
        api(
            node,
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", "5"),
            ],
        )
    };
    assert_eq!(v["status"], "success", "{expr}: {v}");
    let result = v["data"]["result"].as_array().unwrap();
    result
        .iter()
        .filter(|s| {
            s.get("value").is_some() || s["values"].as_array().is_some_and(|a| !a.is_empty())
        })
        .count()
}

#[test]
fn every_panel_and_variable_returns_data() {
    let dashboards = kappie_dashboards::dashboards();
    let mut uids = BTreeSet::new();
    for (name, d) in &dashboards {
        check_conventions(name, d, &mut uids);
    }
    if !require(&[NETNS.as_slice(), &[Need::KernelBtf]].concat()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Netns::new("dnode");
    let peer = Netns::new("dpeer");
    let veth = Veth::new(&peer, &node, 24);
    veth.quiet(&peer, &node);
    node.default_route_via(veth.a_addr4);
    let pins = Bpffs::new("dashboards");

    let mut c = node.command(&bin("kappie-collector"));
    c.arg("--data-dir").arg(dir.path().join("data")).args([
        "--http-listen",
        "127.0.0.1:19290",
        "--grpc-listen",
        "127.0.0.1:19295",
        "--self-scrape-interval-seconds",
        "1",
        // A destination that never answers: the remote write panels have a backlog to show.
        "--remote-write-url",
        "http://127.0.0.1:9/api/v1/write",
    ]);
    let _collector = Proc::spawn("collector", c, &dir.path().join("collector.log"));
    wait_for("collector ready", Duration::from_secs(30), || {
        node.enter(|| ureq::get(&format!("{HTTP}/-/ready")).call().ok())
    });
    let mut s = node.command(&bin("kappie-shipper"));
    s.args([
        "--collector",
        "http://127.0.0.1:19295",
        "--interval",
        "1s",
        "--node-name",
        NODE,
        "--cluster",
        CLUSTER,
    ])
    .args(["--http-listen", "127.0.0.1:19965"])
    .arg("--ebpf-pin-dir")
    .arg(pins.path.join("kappie"))
    .arg("--state-file")
    .arg(dir.path().join("shipper-state.json"));
    let _shipper = Proc::spawn("shipper", s, &dir.path().join("shipper.log"));

    // Traffic: a TCP connection from the peer that stays open (states, flags, a remote),
    // and datagrams to a closed port (NO_SOCKET drops).
    let listener = node.enter(|| TcpListener::bind((veth.b_addr4, 8080)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        conn.write_all(&buf[..n]).unwrap();
        // Held until the client closes it.
        let _ = conn.read(&mut buf);
    });
    let mut client = peer.enter(|| TcpStream::connect((veth.b_addr4, 8080)).unwrap());
    client.write_all(&[7u8; 2000]).unwrap();
    let mut echo = vec![0u8; 2000];
    client.read_exact(&mut echo).unwrap();
    let target = format!("{}:9", veth.b_addr4);
    let send = || {
        peer.enter(|| {
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..50 {
                u.send_to(b"kappie", target.as_str()).unwrap();
            }
        })
    };
    let remote = format!(
        "kappie_tcp_connection_remote{{address=\"{}\",node_name=\"{NODE}\"}}",
        veth.a_addr4
    );
    // Ready when every source has reported twice (rates need two points) and the
    // collector's own metrics and the shipper's are stored.
    let mut rounds = 0;
    wait_for("every source to report", Duration::from_secs(60), || {
        send();
        rounds += 1;
        let have = |q: &str| {
            let v = api(&node, "/api/v1/query", &[("query", q)]);
            !v["data"]["result"].as_array().unwrap().is_empty()
        };
        let ready = rounds > 3
            && have(&format!("count_over_time(kappie_drop_count{{reason=\"NO_SOCKET\",node_name=\"{NODE}\"}}[1m]) > 2"))
            && have(&format!("count_over_time(kappie_tcp_flag_counters{{flag=\"SYN\",node_name=\"{NODE}\"}}[1m]) > 2"))
            && have(&remote)
            && have("count_over_time(kappie_storage_series{job=\"kappie-collector\"}[1m]) > 2")
            && have(&format!("count_over_time(kappie_shipper_pushes_total{{node_name=\"{NODE}\"}}[1m]) > 2"));
        std::thread::sleep(Duration::from_millis(500));
        ready.then_some(())
    });

    let mut empty = Vec::new();
    let mut ran = 0;
    for (name, d) in &dashboards {
        // Variables in order, each with what its query returns (its own query interpolated
        // with the variables before it, as Grafana does); the test's node and cluster must
        // be among the values.
        let mut all = BTreeMap::new();
        let mut one = BTreeMap::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let vname = v["name"].as_str().unwrap().to_owned();
            let q = v["query"]["query"].as_str().unwrap();
            let values = label_values(&node, &interpolate(q, &all));
            let values_one = label_values(&node, &interpolate(q, &one));
            assert!(
                !values.is_empty(),
                "{name}: variable {vname} ({q}) has no values"
            );
            assert!(
                !values_one.is_empty(),
                "{name}: variable {vname} ({q}) has no values for one picked value"
            );
            let pick = match vname.as_str() {
                "node" => NODE.to_owned(),
                "cluster" => CLUSTER.to_owned(),
                "reason" => "NO_SOCKET".to_owned(),
                "interface" => veth.b_if.clone(),
                _ => values[0].clone(),
            };
            assert!(
                values.contains(&pick),
                "{name}: variable {vname} lacks {pick}: {values:?}"
            );
            all.insert(vname.clone(), ".*".to_owned());
            one.insert(vname, grafana_regex(&[&pick]));
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for (which, vars) in [("All", &all), ("one value", &one)] {
                    ran += 1;
                    let q = interpolate(expr, vars);
                    if run_target(&node, t, &q) == 0 {
                        empty.push(format!(
                            "{name} / {} ({which}): {q}",
                            p["title"].as_str().unwrap()
                        ));
                    }
                }
            }
        }
    }
    drop(client);
    let _ = server.join();
    assert!(
        empty.is_empty(),
        "{} of {ran} queries returned no data:\n{}",
        empty.len(),
        empty.join("\n")
    );
    assert!(ran >= 60, "only {ran} queries ran");
}
