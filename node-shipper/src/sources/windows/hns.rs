//! HNS (Host Networking Service) endpoint statistics: the JSON HNS answers through
//! `HNSCall` (vmcompute.dll), as hcsshim's `GetHNSEndpointStats` reads it, and what Kappie
//! takes from it. Field names and the response envelope: `tests/fixtures/windows/README.md`.

use super::normalize_mac;
use super::totals::{Reading, SeriesId};
use crate::source::{Observation, SourceError};
use serde::Deserialize;

/// HNS's answer to every call: `{"Success": …, "Error": …, "Output": …}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    success: bool,
    #[serde(default)]
    error: String,
    #[serde(default)]
    output: Option<serde_json::Value>,
}

/// One endpoint of `GET /endpoints/` (HNS schema v1), the fields Kappie uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HnsEndpoint {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
    /// An endpoint of a pod on another node (overlay networks): no traffic here, no stats.
    #[serde(rename = "IsRemoteEndpoint", default)]
    pub is_remote: bool,
}

/// The counters of `GET /endpointstats/<id>`, cumulative since the endpoint was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HnsCounters {
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub dropped_packets_incoming: u64,
    pub dropped_packets_outgoing: u64,
}

/// One local endpoint and its statistics: what [`super::WindowsPlatform::endpoint_stats`]
/// returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub id: String,
    pub name: String,
    /// As [`normalize_mac`] spells it; matches the endpoint to its VFP port.
    pub mac: String,
    pub counters: HnsCounters,
}

fn unwrap_envelope(call: &str, text: &str) -> Result<serde_json::Value, SourceError> {
    let bad = |msg: String| SourceError::Call {
        call: call.to_owned(),
        msg,
    };
    let env: Envelope = serde_json::from_str(text)
        .map_err(|e| bad(format!("HNS answered what is not its JSON envelope: {e}")))?;
    if !env.success {
        return Err(bad(format!("HNS failed: {}", env.error)));
    }
    Ok(env.output.unwrap_or(serde_json::Value::Null))
}

/// Reads HNS's answer to `GET /endpoints/`.
pub fn parse_endpoints(text: &str) -> Result<Vec<HnsEndpoint>, SourceError> {
    const CALL: &str = "HNS GET /endpoints/";
    let output = unwrap_envelope(CALL, text)?;
    if output.is_null() {
        return Ok(Vec::new());
    }
    serde_json::from_value(output).map_err(|e| SourceError::Call {
        call: CALL.into(),
        msg: format!("unexpected endpoint list: {e}"),
    })
}

/// Reads HNS's answer to `GET /endpointstats/<id>`.
pub fn parse_endpoint_stats(text: &str) -> Result<HnsCounters, SourceError> {
    const CALL: &str = "HNS GET /endpointstats/";
    let output = unwrap_envelope(CALL, text)?;
    serde_json::from_value(output).map_err(|e| SourceError::Call {
        call: CALL.into(),
        msg: format!("unexpected endpoint statistics: {e}"),
    })
}

/// The statistics of every local endpoint, through `get`, which performs an HNS `GET` of the
/// path it is given and returns HNS's answer as it came. An endpoint whose statistics cannot
/// be had (deleted between the two calls) is left out; if every one fails, that is the
/// error.
pub fn endpoint_stats_via(
    mut get: impl FnMut(&str) -> Result<String, SourceError>,
) -> Result<Vec<EndpointStats>, SourceError> {
    let endpoints = parse_endpoints(&get("/endpoints/")?)?;
    let mut out = Vec::new();
    let mut first_error = None;
    for ep in endpoints.into_iter().filter(|e| !e.is_remote) {
        match get(&format!("/endpointstats/{}", ep.id)).and_then(|t| parse_endpoint_stats(&t)) {
            Ok(counters) => out.push(EndpointStats {
                mac: normalize_mac(&ep.mac_address),
                id: ep.id,
                name: ep.name,
                counters,
            }),
            Err(e) => {
                tracing::debug!(endpoint = %ep.id, error = %e, "no statistics for this HNS endpoint");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// The readings for the node totals:
/// `PacketsReceived`/`PacketsSent` → `kappie_forward_count{direction=ingress/egress}`,
/// `BytesReceived`/`BytesSent` → `kappie_forward_bytes`, and
/// `DroppedPacketsIncoming`/`Outgoing` → `kappie_drop_count{reason="ENDPOINT"}` (HNS names
/// no cause; Retina's label for these is `endpoint`). The endpoint's view is the pod's:
/// received is ingress.
pub fn readings(endpoints: &[EndpointStats]) -> Vec<Reading> {
    let mut out = Vec::new();
    for ep in endpoints {
        let c = &ep.counters;
        let forward = |metric, direction: &str, value| Reading {
            entity: ep.id.clone(),
            series: SeriesId::new(metric, vec![("direction", direction.into())]),
            value,
        };
        let drop = |direction: &str, value| Reading {
            entity: ep.id.clone(),
            series: SeriesId::new(
                "kappie_drop_count",
                vec![
                    ("reason", "ENDPOINT".into()),
                    ("direction", direction.into()),
                ],
            ),
            value,
        };
        out.extend([
            forward("kappie_forward_count", "ingress", c.packets_received),
            forward("kappie_forward_count", "egress", c.packets_sent),
            forward("kappie_forward_bytes", "ingress", c.bytes_received),
            forward("kappie_forward_bytes", "egress", c.bytes_sent),
            drop("ingress", c.dropped_packets_incoming),
            drop("egress", c.dropped_packets_outgoing),
        ]);
    }
    out
}

/// Each endpoint's own counters as `kappie_interface_stats`: `interface_name` the endpoint's
/// HNS name (its ID if it has none), `statistic_name` HNS's field name. Cumulative values:
/// the agent's persisted baselines make them deltas, across restarts too.
pub fn interface_stats(endpoints: &[EndpointStats]) -> Vec<Observation> {
    let mut out = Vec::new();
    for ep in endpoints {
        let name = if ep.name.is_empty() { &ep.id } else { &ep.name };
        let c = &ep.counters;
        for (statistic, value) in [
            ("PacketsReceived", c.packets_received),
            ("PacketsSent", c.packets_sent),
            ("BytesReceived", c.bytes_received),
            ("BytesSent", c.bytes_sent),
            ("DroppedPacketsIncoming", c.dropped_packets_incoming),
            ("DroppedPacketsOutgoing", c.dropped_packets_outgoing),
        ] {
            out.push(Observation::counter(
                "kappie_interface_stats",
                vec![
                    ("interface_name", name.clone()),
                    ("statistic_name", statistic.to_owned()),
                ],
                value as f64,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    const EP_A: &str = "3c1c2a4e-0b6f-4a52-9f0e-1a2b3c4d5e01";

    #[test]
    fn endpoint_list_reads_local_and_remote_endpoints() {
        let eps = parse_endpoints(&fixture("windows/collection1/hns_endpoints.json")).unwrap();
        assert_eq!(eps.len(), 4);
        assert_eq!(eps[0].id, EP_A);
        assert_eq!(eps[0].mac_address, "00-15-5D-5A-B0-A1");
        assert!(!eps[0].is_remote);
        assert_eq!(eps.iter().filter(|e| e.is_remote).count(), 1);
    }

    #[test]
    fn endpoint_stats_read_every_counter() {
        let c = parse_endpoint_stats(&fixture(&format!(
            "windows/collection1/hns_endpointstats/{EP_A}.json"
        )))
        .unwrap();
        assert_eq!(
            c,
            HnsCounters {
                packets_received: 1000,
                packets_sent: 800,
                bytes_received: 150000,
                bytes_sent: 90000,
                dropped_packets_incoming: 3,
                dropped_packets_outgoing: 1,
            }
        );
    }

    #[test]
    fn a_failed_hns_call_is_an_error_with_hns_message() {
        let e = parse_endpoints(r#"{"Success":false,"Error":"Element not found."}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Element not found."), "{e}");
        assert!(parse_endpoint_stats("not json").is_err());
    }

    #[test]
    fn stats_are_asked_for_local_endpoints_only() {
        let mut asked = Vec::new();
        let eps = endpoint_stats_via(|path| {
            asked.push(path.to_owned());
            let file = match path.strip_prefix("/endpointstats/") {
                Some(id) => format!("windows/collection1/hns_endpointstats/{id}.json"),
                None => "windows/collection1/hns_endpoints.json".into(),
            };
            Ok(fixture(&file))
        })
        .unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(asked.len(), 4, "{asked:?}");
        assert_eq!(eps[0].mac, "00155d5ab0a1");
        assert_eq!(eps[0].name, "pod-a_cbr0");
    }

    #[test]
    fn an_endpoint_gone_between_the_calls_is_left_out() {
        let eps = endpoint_stats_via(|path| match path.strip_prefix("/endpointstats/") {
            Some(id) if id == EP_A => Ok(r#"{"Success":false,"Error":"not found"}"#.into()),
            Some(id) => Ok(fixture(&format!(
                "windows/collection1/hns_endpointstats/{id}.json"
            ))),
            None => Ok(fixture("windows/collection1/hns_endpoints.json")),
        })
        .unwrap();
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().all(|e| e.id != EP_A));
    }

    #[test]
    fn interface_stats_are_per_endpoint_under_hns_names() {
        let eps = [EndpointStats {
            id: "id-1".into(),
            name: String::new(),
            mac: String::new(),
            counters: HnsCounters {
                bytes_sent: 5,
                ..HnsCounters::default()
            },
        }];
        let obs = interface_stats(&eps);
        assert_eq!(obs.len(), 6);
        let bytes_sent = obs
            .iter()
            .find(|o| o.labels.contains(&("statistic_name", "BytesSent".into())))
            .unwrap();
        assert_eq!(bytes_sent.value, 5.0);
        assert!(bytes_sent
            .labels
            .contains(&("interface_name", "id-1".to_owned())));
    }
}
