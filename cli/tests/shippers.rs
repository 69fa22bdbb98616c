//! `kappie shippers` after real gRPC shipper sessions into a real collector: the list, its
//! order, the staleness verdict and exit code 3.

mod common;

use common::{kappie, report, Collector, Shipper, CLUSTER};
use std::time::Duration;

// Ids chosen so that the order by node differs from the order by shipper id.
const B: Shipper = Shipper {
    id: "shipper-1",
    node: "node-b",
    version: "0.7.1",
};
const A: Shipper = Shipper {
    id: "shipper-2",
    node: "node-a",
    version: "0.7.2",
};

/// `age` as the table writes it: whole seconds below a minute.
fn is_seconds(age: &str) -> bool {
    age.strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn every_shipper_is_listed_by_node_with_what_it_sent() {
    let c = Collector::start(&[]);
    report(&c.grpc, &B, 2);
    report(&c.grpc, &A, 3);
    let r = kappie(&c.http, &["shippers", "--stale", "10m"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows = r.rows();
    assert_eq!(
        rows[0], "NODE CLUSTER SHIPPER LAST PUSH SEQUENCE SERIES SAMPLES/MIN VERSION STATUS",
        "{r:?}"
    );
    assert_eq!(rows.len(), 3, "{r:?}");
    for (row, s, batches) in [(&rows[1], &A, 3), (&rows[2], &B, 2)] {
        let cells: Vec<&str> = row.split(' ').collect();
        assert_eq!(cells.len(), 9, "{row}");
        assert_eq!(&cells[..3], [s.node, CLUSTER, s.id], "{row}");
        assert!(
            is_seconds(cells[3]),
            "last push age {:?} in {row}",
            cells[3]
        );
        let batches = batches.to_string();
        // One gauge per batch: one series, one sample a batch.
        assert_eq!(
            &cells[4..],
            [&*batches, "1", &*batches, s.version, "ok"],
            "{row}"
        );
    }
}

#[test]
fn a_shipper_that_stops_pushing_is_stale_and_the_exit_code_is_3() {
    let c = Collector::start(&[]);
    report(&c.grpc, &A, 1);
    // Waits (with a deadline) until the push is older than --stale.
    let r = kappie_testkit::wait_for(
        "the shipper to be over a second quiet",
        Duration::from_secs(30),
        || {
            let r = kappie(&c.http, &["shippers", "--stale", "1s"]);
            (r.code != 0).then_some(r)
        },
    );
    assert_eq!(r.code, 3, "{r:?}");
    let rows = r.rows();
    assert_eq!(rows.len(), 2, "{r:?}");
    assert!(rows[1].starts_with("node-a prod shipper-2 "), "{r:?}");
    assert!(rows[1].ends_with(" 0.7.2 STALE"), "{r:?}");
    // No colour codes when stdout is not a terminal.
    assert!(!r.stdout.contains('\x1b'), "{r:?}");
}

#[test]
fn a_shipper_that_never_pushed_is_stale() {
    let c = Collector::start(&[]);
    report(&c.grpc, &A, 1);
    report(&c.grpc, &B, 0);
    let r = kappie(&c.http, &["shippers", "--stale", "10m"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        r.rows()[2],
        "node-b prod shipper-1 never 0 0 0 0.7.1 STALE",
        "{r:?}"
    );
}

#[test]
fn json_output_is_the_inventory_with_a_stale_flag() {
    let c = Collector::start(&[]);
    report(&c.grpc, &B, 2);
    report(&c.grpc, &A, 3);
    let r = kappie(&c.http, &["-o", "json", "shippers", "--stale", "10m"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    let list = v.as_array().expect("an array");
    assert_eq!(list.len(), 2, "{v}");
    for (e, s, batches) in [(&list[0], &A, 3), (&list[1], &B, 2)] {
        assert_eq!(e["nodeName"], s.node, "{v}");
        assert_eq!(e["shipperId"], s.id, "{v}");
        assert_eq!(e["cluster"], CLUSTER, "{v}");
        assert_eq!(e["version"], s.version, "{v}");
        assert_eq!(e["lastSequence"], batches, "{v}");
        assert_eq!(e["series"], 1, "{v}");
        assert_eq!(e["samplesLastMinute"], batches, "{v}");
        assert_eq!(e["stale"], false, "{v}");
        assert!(
            e["lastPushAgeSeconds"].as_f64().is_some_and(|a| a >= 0.0),
            "{v}"
        );
        assert!(e["lastPushTime"].is_string(), "{v}");
    }
}

#[test]
fn the_cluster_flag_filters_shippers() {
    let c = Collector::start(&[]);
    report(&c.grpc, &A, 1);
    let r = kappie(&c.http, &["--cluster", "lab", "shippers"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    assert!(r.stderr.contains("no shippers"), "{r:?}");
    let r = kappie(
        &c.http,
        &["--cluster", "prod", "shippers", "--stale", "10m"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.rows().len(), 2, "{r:?}");
}
