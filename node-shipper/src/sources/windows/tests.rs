//! The Windows source over a fake platform that answers from the fixture files of
//! `tests/fixtures/windows/collection{1,2}/`, through the agent's delta step: what a
//! Windows node's shipper would push for two collections.

use super::*;
use crate::agent::Delta;
use crate::queue::Batch;
use crate::series::SeriesKey;
use crate::state::Baselines;

const PORT_A: &str = "6F2A1C3E-8B4D-4E2A-9C11-0A1B2C3D4E5A";

/// Answers as Windows would, from `tests/fixtures/windows/<dir>/`.
struct Fixtures {
    dir: &'static str,
    /// A port whose counters cannot be read.
    failing_port: Option<&'static str>,
    /// `vfpctrl /list-vmswitch-port` fails.
    no_vfpctrl: bool,
}

impl Fixtures {
    fn of(dir: &'static str) -> Self {
        Fixtures {
            dir,
            failing_port: None,
            no_vfpctrl: false,
        }
    }

    fn read(&self, call: &str, file: &str) -> Result<String, SourceError> {
        let path = format!(
            "{}/tests/fixtures/windows/{}/{file}",
            env!("CARGO_MANIFEST_DIR"),
            self.dir
        );
        std::fs::read_to_string(&path).map_err(|e| SourceError::Call {
            call: call.into(),
            msg: format!("{path}: {e}"),
        })
    }
}

impl WindowsPlatform for Fixtures {
    fn list_ports(&self) -> Result<String, SourceError> {
        if self.no_vfpctrl {
            return Err(SourceError::Call {
                call: "vfpctrl.exe /list-vmswitch-port".into(),
                msg: "cannot start it".into(),
            });
        }
        self.read("vfpctrl", "vfpctrl_list_vmswitch_port.txt")
    }

    fn port_counters(&self, port: &str) -> Result<String, SourceError> {
        let call = format!("vfpctrl.exe /port {port} /get-port-counter");
        if self.failing_port == Some(port) {
            return Err(SourceError::Call {
                call,
                msg: "ERROR: port not found".into(),
            });
        }
        self.read(&call, &format!("vfpctrl_port_counter/{port}.txt"))
    }

    fn endpoint_stats(&self) -> Result<Vec<EndpointStats>, SourceError> {
        hns::endpoint_stats_via(|path| match path.strip_prefix("/endpointstats/") {
            Some(id) => self.read(path, &format!("hns_endpointstats/{id}.json")),
            None => self.read(path, "hns_endpoints.json"),
        })
    }
}

/// Collects once from `platform` with `source`, returning the observations.
fn collect(
    source: &mut WindowsSource<Fixtures>,
    platform: Fixtures,
) -> (Vec<Observation>, Result<(), SourceError>) {
    source.platform = platform;
    let mut obs = Vec::new();
    let result = source.collect(&mut obs);
    (obs, result)
}

/// The counter delta of one series in a batch.
fn delta(batch: &Batch, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    labels.push(("node_name".into(), "win-node-1".into()));
    labels.push(("cluster".into(), "test".into()));
    let key = SeriesKey::new(metric, labels);
    batch
        .counters
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, d)| *d)
}

/// The agent's batches for collection 1 and then collection 2.
fn two_batches() -> (Batch, Batch) {
    let mut source = WindowsSource::new(Fixtures::of("collection1"));
    let mut agent = Delta::new(Baselines::default(), "win-node-1", "test");
    let (obs1, r1) = collect(&mut source, Fixtures::of("collection1"));
    r1.unwrap();
    let b1 = agent.batch(&obs1, 1_000);
    let (obs2, r2) = collect(&mut source, Fixtures::of("collection2"));
    r2.unwrap();
    let b2 = agent.batch(&obs2, 11_000);
    (b1, b2)
}

#[test]
fn the_first_collection_starts_node_totals_at_zero_and_reports_endpoints_as_they_are() {
    let (b1, _) = two_batches();
    let ingress = [("direction", "ingress")];
    assert_eq!(delta(&b1, "kappie_forward_count", &ingress), Some(0.0));
    assert_eq!(delta(&b1, "kappie_forward_bytes", &ingress), Some(0.0));
    assert_eq!(
        delta(
            &b1,
            "kappie_interface_stats",
            &[
                ("interface_name", "pod-a_cbr0"),
                ("statistic_name", "PacketsReceived")
            ]
        ),
        Some(1000.0)
    );
    assert!(b1.gauges.is_empty());
}

/// Regression for Retina's hnsstats, which set the node's value to the last endpoint's:
/// here the last endpoint read (D) has 7 packets received, the node gained 157.
#[test]
fn hns_deltas_are_the_sum_of_every_endpoints_increase() {
    let (_, b2) = two_batches();
    let d = |metric, labels: &[(&str, &str)]| delta(&b2, metric, labels);
    // A +100, C +50, D (new) 7; B's pod is gone and takes nothing back.
    assert_eq!(
        d("kappie_forward_count", &[("direction", "ingress")]),
        Some(157.0)
    );
    assert_eq!(
        d("kappie_forward_count", &[("direction", "egress")]),
        Some(75.0)
    );
    assert_eq!(
        d("kappie_forward_bytes", &[("direction", "ingress")]),
        Some(21700.0)
    );
    assert_eq!(
        d("kappie_forward_bytes", &[("direction", "egress")]),
        Some(7400.0)
    );
    assert_eq!(
        d(
            "kappie_drop_count",
            &[("reason", "ENDPOINT"), ("direction", "ingress")]
        ),
        Some(3.0)
    );
    assert_eq!(
        d(
            "kappie_drop_count",
            &[("reason", "ENDPOINT"), ("direction", "egress")]
        ),
        Some(1.0)
    );
}

#[test]
fn vfp_deltas_sum_the_pods_ports_with_a_restarted_port_counted_from_zero() {
    let (_, b2) = two_batches();
    let d = |metric, labels: &[(&str, &str)]| delta(&b2, metric, labels);
    // A +2, C 0, D (new) 1.
    assert_eq!(
        d(
            "kappie_drop_count",
            &[("reason", "ACL"), ("direction", "egress")]
        ),
        Some(3.0)
    );
    // A +5, C restarted at 2, D 3.
    assert_eq!(
        d(
            "kappie_tcp_flag_counters",
            &[("flag", "SYN"), ("direction", "egress")]
        ),
        Some(10.0)
    );
    // A +2, C restarted at 1, D 1.
    assert_eq!(
        d(
            "kappie_tcp_flag_counters",
            &[("flag", "RST"), ("direction", "ingress")]
        ),
        Some(4.0)
    );
    assert_eq!(
        d(
            "kappie_tcp_connection_stats",
            &[("statistic_name", "OutTCPConnectionsVerified")]
        ),
        Some(9.0)
    );
    assert_eq!(
        d(
            "kappie_tcp_connection_stats",
            &[("statistic_name", "InTCPConnectionsExpiredtoTimeWait")]
        ),
        Some(3.0)
    );
}

#[test]
fn switch_drops_count_the_pods_ports_only() {
    let (b1, b2) = two_batches();
    // A +1, D (new) 1.
    assert_eq!(
        delta(
            &b2,
            "kappie_drop_count",
            &[("reason", "MAC_SPOOFING"), ("direction", "egress")]
        ),
        Some(2.0)
    );
    // A +6, C's first drop of this reason 2.
    assert_eq!(
        delta(
            &b2,
            "kappie_drop_count",
            &[
                ("reason", "FAILED_SECURITY_POLICY"),
                ("direction", "ingress")
            ]
        ),
        Some(8.0)
    );
    // Only the external port drops for this reason: not a pod's, not counted.
    for b in [&b1, &b2] {
        assert!(!b.counters.iter().any(|(k, _)| k
            .labels
            .contains(&("reason".into(), "FILTERED_VLAN".into()))));
    }
}

#[test]
fn a_port_that_fails_once_is_neither_lost_nor_counted_twice() {
    let syn_egress = |obs: &[Observation]| {
        obs.iter()
            .find(|o| {
                o.metric == "kappie_tcp_flag_counters"
                    && o.labels.contains(&("flag", "SYN".into()))
                    && o.labels.contains(&("direction", "egress".into()))
            })
            .map(|o| o.value)
    };
    let mut source = WindowsSource::new(Fixtures::of("collection1"));
    collect(&mut source, Fixtures::of("collection1")).1.unwrap();
    let failing = Fixtures {
        failing_port: Some(PORT_A),
        ..Fixtures::of("collection2")
    };
    let (obs, result) = collect(&mut source, failing);
    let e = result.unwrap_err().to_string();
    assert!(e.contains(PORT_A), "{e}");
    // C restarted at 2 and D is new with 3; A missed this collection.
    assert_eq!(syn_egress(&obs), Some(5.0));
    let (obs, result) = collect(&mut source, Fixtures::of("collection2"));
    result.unwrap();
    // A's increase since collection 1 (+5) arrives now, once.
    assert_eq!(syn_egress(&obs), Some(10.0));
}

#[test]
fn without_vfpctrl_the_hns_numbers_still_come() {
    let mut source = WindowsSource::new(Fixtures::of("collection1"));
    let no_vfp = Fixtures {
        no_vfpctrl: true,
        ..Fixtures::of("collection1")
    };
    let (obs, result) = collect(&mut source, no_vfp);
    assert!(result.unwrap_err().to_string().contains("vfpctrl"));
    assert!(obs.iter().any(|o| o.metric == "kappie_forward_count"));
    assert!(!obs.iter().any(|o| o.metric == "kappie_tcp_flag_counters"));
}

#[test]
fn without_hns_the_source_fails_and_reports_nothing() {
    let mut source = WindowsSource::new(Fixtures::of("no-such-collection"));
    let (obs, result) = collect(&mut source, Fixtures::of("no-such-collection"));
    let e = result.unwrap_err().to_string();
    assert!(e.starts_with("/endpoints/"), "{e}");
    assert!(obs.is_empty());
}

#[test]
fn label_values_are_upper_snake() {
    assert_eq!(upper_snake("Mac Spoofing"), "MAC_SPOOFING");
    assert_eq!(
        upper_snake("  Failed  Security-Policy!"),
        "FAILED_SECURITY_POLICY"
    );
    assert_eq!(upper_snake("ACL"), "ACL");
    assert_eq!(upper_snake("IPsec"), "IPSEC");
    assert_eq!(upper_snake("--"), "");
}

#[test]
fn macs_compare_whatever_their_separators() {
    assert_eq!(normalize_mac("00-15-5D-5A-B0-A1"), "00155d5ab0a1");
    assert_eq!(normalize_mac(" 00:15:5d:5a:b0:a1"), "00155d5ab0a1");
    assert_eq!(normalize_mac("00155D5AB0A1"), "00155d5ab0a1");
}
