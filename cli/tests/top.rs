//! `kappie top` against a real collector holding kappie-shaped counters written by remote
//! write: the rows, their order and the rates computed from the data.

mod common;

use common::{collector_with_fixture, kappie, now_ms, series};

fn close(got: &serde_json::Value, want: f64) -> bool {
    got.as_f64()
        .is_some_and(|g| (g - want).abs() <= 1e-9 * want.abs().max(1.0))
}

#[test]
fn drops_are_ranked_by_rate_with_their_bytes() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["top", "drops"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "NODE REASON DIRECTION DROPS BYTES",
            "node-a NO_SOCKET ingress 5 pkt/s 300 B/s",
            "node-b NETFILTER_DROP egress 2 pkt/s 3 kB/s",
            "node-a TCP_CSUM ingress 0.5 pkt/s 50 B/s",
            "node-c NO_SOCKET ingress 0.25 pkt/s 20 B/s",
        ],
        "{r:?}"
    );
}

#[test]
fn nodes_show_forwarded_bytes_packets_and_drops_per_direction() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["top", "nodes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "NODE DIRECTION BYTES PACKETS DROPS",
            "node-b ingress 250 kB/s 350 pkt/s -",
            "node-c ingress 12 kB/s 20 pkt/s 0.25 pkt/s",
            "node-c egress 3 kB/s 8 pkt/s -",
            "node-a ingress 1.5 kB/s 10 pkt/s 5.5 pkt/s",
            "node-a egress 600 B/s 5 pkt/s -",
            "node-b egress 40 B/s 1 pkt/s 2 pkt/s",
        ],
        "{r:?}"
    );
}

#[test]
fn limit_keeps_the_top_rows() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["top", "nodes", "--limit", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "NODE DIRECTION BYTES PACKETS DROPS",
            "node-b ingress 250 kB/s 350 pkt/s -",
            "node-c ingress 12 kB/s 20 pkt/s 0.25 pkt/s",
        ],
        "{r:?}"
    );
}

#[test]
fn remotes_are_summed_over_nodes_without_the_other_bucket() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["top", "remotes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "ADDRESS PORT SOCKETS NODES",
            "192.0.2.10 443 12 2",
            "198.51.100.7 5432 10 2",
            "2001:db8::1 80 3 1",
        ],
        "{r:?}"
    );
}

#[test]
fn interfaces_show_each_statistic_per_second() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["top", "interfaces"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "NODE INTERFACE TOTAL RX TX RX ERR TX ERR RX DROP TX DROP",
            "node-b eth0 150 kB/s 100 kB/s 50 kB/s 0/s 0/s 2/s 0/s",
            "node-a eth0 3 kB/s 2 kB/s 1 kB/s 0.1/s 0/s 0.5/s 0/s",
            "node-b lxc12ab 30 B/s 10 B/s 20 B/s - - - -",
        ],
        "{r:?}"
    );
}

#[test]
fn the_node_flag_is_a_regex() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["top", "drops", "--node", "node-(a|c)"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "NODE REASON DIRECTION DROPS BYTES",
            "node-a NO_SOCKET ingress 5 pkt/s 300 B/s",
            "node-a TCP_CSUM ingress 0.5 pkt/s 50 B/s",
            "node-c NO_SOCKET ingress 0.25 pkt/s 20 B/s",
        ],
        "{r:?}"
    );
    let r = kappie(&c.http, &["top", "remotes", "--node", "node-a"]);
    assert_eq!(
        r.rows(),
        [
            "ADDRESS PORT SOCKETS NODES",
            "192.0.2.10 443 7 1",
            "198.51.100.7 5432 1 1",
        ],
        "{r:?}"
    );
}

#[test]
fn backslashes_and_quotes_in_the_node_regex_are_escaped() {
    let c = collector_with_fixture();
    // `\-` is an escaped hyphen to the regex; unescaped in the PromQL string it would be an
    // unknown escape and a parse error.
    let r = kappie(&c.http, &["top", "drops", "--node", r"node\-b"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.rows(),
        [
            "NODE REASON DIRECTION DROPS BYTES",
            "node-b NETFILTER_DROP egress 2 pkt/s 3 kB/s",
        ],
        "{r:?}"
    );
    // A quote cannot end the string and smuggle in a matcher: it matches no node.
    let r = kappie(
        &c.http,
        &["top", "drops", "--node", r#"node-a",reason="NO_SOCKET"#],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.rows(), ["NODE REASON DIRECTION DROPS BYTES"], "{r:?}");
    assert!(r.stderr.contains("no drops data in the last 300s"), "{r:?}");
}

#[test]
fn the_cluster_flag_leaves_out_other_clusters() {
    let c = collector_with_fixture();
    let t = now_ms();
    let lab = |dt: i64, v: f64| (t - dt, v);
    c.write(vec![series(
        &[
            ("__name__", "kappie_drop_count"),
            ("cluster", "lab"),
            ("node_name", "node-z"),
            ("reason", "POLICY_DENIED"),
            ("direction", "egress"),
        ],
        &[lab(60_000, 0.0), lab(30_000, 3000.0), lab(0, 6000.0)],
    )]);
    let all = kappie(&c.http, &["top", "drops", "--limit", "1"]);
    assert_eq!(all.code, 0, "{all:?}");
    assert!(
        all.rows()[1].starts_with("node-z POLICY_DENIED egress "),
        "{all:?}"
    );
    let prod = kappie(
        &c.http,
        &["--cluster", "prod", "top", "drops", "--limit", "1"],
    );
    assert_eq!(
        prod.rows(),
        [
            "NODE REASON DIRECTION DROPS BYTES",
            "node-a NO_SOCKET ingress 5 pkt/s 300 B/s",
        ],
        "{prod:?}"
    );
}

#[test]
fn json_output_has_the_exact_rates() {
    let c = collector_with_fixture();
    let r = kappie(&c.http, &["-o", "json", "top", "nodes", "--limit", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    let rows = v.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["node_name"], "node-b", "{v}");
    assert_eq!(rows[0]["direction"], "ingress", "{v}");
    assert!(close(&rows[0]["bytesPerSecond"], 250_000.0), "{v}");
    assert!(close(&rows[0]["packetsPerSecond"], 350.0), "{v}");
    assert_eq!(rows[0]["dropsPerSecond"], serde_json::Value::Null, "{v}");
    assert_eq!(rows[1]["node_name"], "node-c", "{v}");
    assert!(close(&rows[1]["dropsPerSecond"], 0.25), "{v}");
}
