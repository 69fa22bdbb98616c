//! What `kappie top`, `kappie watch` and `kappie shippers` show: the PromQL of each top view,
//! the join of its answers into rows, and the shipper list with its staleness verdict.
//! Everything here but [`top`] and [`shippers`] is pure, so the tests below pin the queries
//! and the tables exactly.

use crate::client::{Client, Error, Sample, Shipper};
use crate::promql::{restricted_to_top, sum_rate, Filter};
use crate::table::{self, Cell, Column, Table};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// A top view (`kappie top VIEW`, `kappie watch VIEW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Drops per second by node, kernel drop reason and direction.
    Drops,
    /// Forwarded bytes and packets per second and drops per second by node and direction.
    Nodes,
    /// Open TCP sockets by remote address and port, summed over nodes.
    Remotes,
    /// Received and sent bytes, errors and drops per second by node and interface.
    Interfaces,
}

impl View {
    pub fn name(self) -> &'static str {
        match self {
            View::Drops => "drops",
            View::Nodes => "nodes",
            View::Remotes => "remotes",
            View::Interfaces => "interfaces",
        }
    }
}

/// What a top view looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopOptions {
    pub filter: Filter,
    /// The rate window (`[since]`); the remotes view is a gauge and ignores it.
    pub since: Duration,
    pub limit: usize,
}

/// How a value column reads in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    BytesPerSecond,
    PacketsPerSecond,
    PerSecond,
    Count,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::BytesPerSecond => table::bytes_per_second(v),
            Unit::PacketsPerSecond => table::per_second(v, "pkt"),
            Unit::PerSecond => table::per_second(v, ""),
            Unit::Count => table::count(v),
        }
    }
}

/// A value column: which query answers it (and, for a query grouped by one more label,
/// which value of `statistic_name` it is), its header and its JSON key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueColumn {
    pub header: &'static str,
    pub json: &'static str,
    pub query: usize,
    pub statistic: Option<&'static str>,
    pub unit: Unit,
}

/// A view's queries and columns. Query 0 ranks: its `topk` picks the rows and their order;
/// the others are restricted to the same groups and joined on the key labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `(header, label)` of the key columns.
    pub keys: Vec<(&'static str, &'static str)>,
    pub values: Vec<ValueColumn>,
    pub queries: Vec<String>,
}

const INTERFACE_STATS: [(&str, &str, &str, Unit); 6] = [
    ("RX", "rxBytesPerSecond", "rx_bytes", Unit::BytesPerSecond),
    ("TX", "txBytesPerSecond", "tx_bytes", Unit::BytesPerSecond),
    ("RX ERR", "rxErrorsPerSecond", "rx_errors", Unit::PerSecond),
    ("TX ERR", "txErrorsPerSecond", "tx_errors", Unit::PerSecond),
    (
        "RX DROP",
        "rxDroppedPerSecond",
        "rx_dropped",
        Unit::PerSecond,
    ),
    (
        "TX DROP",
        "txDroppedPerSecond",
        "tx_dropped",
        Unit::PerSecond,
    ),
];

fn col(header: &'static str, json: &'static str, query: usize, unit: Unit) -> ValueColumn {
    ValueColumn {
        header,
        json,
        query,
        statistic: None,
        unit,
    }
}

/// The queries and columns of `view`.
pub fn spec(view: View, o: &TopOptions) -> Spec {
    let f = &o.filter;
    let n = o.limit;
    match view {
        View::Drops => {
            let by = "node_name, reason, direction";
            let rank = sum_rate(by, &f.selector("kappie_drop_count", &[]), o.since);
            let bytes = sum_rate(by, &f.selector("kappie_drop_bytes", &[]), o.since);
            Spec {
                keys: vec![
                    ("NODE", "node_name"),
                    ("REASON", "reason"),
                    ("DIRECTION", "direction"),
                ],
                values: vec![
                    col("DROPS", "dropsPerSecond", 0, Unit::PacketsPerSecond),
                    col("BYTES", "bytesPerSecond", 1, Unit::BytesPerSecond),
                ],
                queries: vec![
                    format!("topk({n}, {rank})"),
                    restricted_to_top(&bytes, by, n, &rank),
                ],
            }
        }
        View::Nodes => {
            let by = "node_name, direction";
            let rank = sum_rate(by, &f.selector("kappie_forward_bytes", &[]), o.since);
            let packets = sum_rate(by, &f.selector("kappie_forward_count", &[]), o.since);
            let drops = sum_rate(by, &f.selector("kappie_drop_count", &[]), o.since);
            Spec {
                keys: vec![("NODE", "node_name"), ("DIRECTION", "direction")],
                values: vec![
                    col("BYTES", "bytesPerSecond", 0, Unit::BytesPerSecond),
                    col("PACKETS", "packetsPerSecond", 1, Unit::PacketsPerSecond),
                    col("DROPS", "dropsPerSecond", 2, Unit::PacketsPerSecond),
                ],
                queries: vec![
                    format!("topk({n}, {rank})"),
                    restricted_to_top(&packets, by, n, &rank),
                    restricted_to_top(&drops, by, n, &rank),
                ],
            }
        }
        View::Remotes => {
            let by = "address, port";
            // `other` is the shipper's bucket for the remotes past its top N: not a remote.
            let sel = f.selector("kappie_tcp_connection_remote", &[r#"address!="other""#]);
            let rank = format!("sum by ({by}) ({sel})");
            let nodes = format!("count by ({by}) ({sel})");
            Spec {
                keys: vec![("ADDRESS", "address"), ("PORT", "port")],
                values: vec![
                    col("SOCKETS", "sockets", 0, Unit::Count),
                    col("NODES", "nodes", 1, Unit::Count),
                ],
                queries: vec![
                    format!("topk({n}, {rank})"),
                    restricted_to_top(&nodes, by, n, &rank),
                ],
            }
        }
        View::Interfaces => {
            let by = "node_name, interface_name";
            let names: Vec<&str> = INTERFACE_STATS.iter().map(|s| s.2).collect();
            let bytes_sel = f.selector(
                "kappie_interface_stats",
                &[r#"statistic_name=~"rx_bytes|tx_bytes""#],
            );
            let stats_matcher = format!("statistic_name=~\"{}\"", names.join("|"));
            let stats_sel = f.selector("kappie_interface_stats", &[&stats_matcher]);
            let rank = sum_rate(by, &bytes_sel, o.since);
            let stats = sum_rate(&format!("{by}, statistic_name"), &stats_sel, o.since);
            let mut values = vec![col("TOTAL", "bytesPerSecond", 0, Unit::BytesPerSecond)];
            values.extend(
                INTERFACE_STATS
                    .iter()
                    .map(|&(header, json, stat, unit)| ValueColumn {
                        header,
                        json,
                        query: 1,
                        statistic: Some(stat),
                        unit,
                    }),
            );
            Spec {
                keys: vec![("NODE", "node_name"), ("INTERFACE", "interface_name")],
                values,
                queries: vec![
                    format!("topk({n}, {rank})"),
                    restricted_to_top(&stats, by, n, &rank),
                ],
            }
        }
    }
}

/// One row of a top view: its key label values and its values (`None`: no such series).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub keys: Vec<String>,
    pub values: Vec<Option<f64>>,
}

/// The rows of `spec` from the answers to its queries (same order): every group of query
/// 0, highest first (ties by key), with the other columns joined on the key labels.
pub fn assemble(spec: &Spec, answers: &[Vec<Sample>]) -> Vec<Row> {
    let key_of = |s: &Sample| -> Vec<String> {
        spec.keys
            .iter()
            .map(|(_, l)| s.metric.get(*l).cloned().unwrap_or_default())
            .collect()
    };
    // Per value column, its value by key.
    let columns: Vec<HashMap<Vec<String>, f64>> = spec
        .values
        .iter()
        .map(|c| {
            answers
                .get(c.query)
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|s| {
                    c.statistic.is_none_or(|st| {
                        s.metric.get("statistic_name").map(String::as_str) == Some(st)
                    })
                })
                .map(|s| (key_of(s), s.value.value()))
                .collect()
        })
        .collect();
    let mut rows: Vec<Row> = answers
        .first()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let keys = key_of(s);
            let values = columns.iter().map(|c| c.get(&keys).copied()).collect();
            Row { keys, values }
        })
        .collect();
    rows.sort_by(|a, b| {
        let (x, y) = (
            a.values[0].unwrap_or(f64::NAN),
            b.values[0].unwrap_or(f64::NAN),
        );
        // Highest first; NaN last.
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
            .then_with(|| a.keys.cmp(&b.keys))
    });
    rows
}

/// The rows as a table: key columns left, values right, `-` where a series is missing.
pub fn top_table(spec: &Spec, rows: &[Row]) -> Table {
    let mut t = Table::new(
        spec.keys
            .iter()
            .map(|(h, _)| Column::left(h))
            .chain(spec.values.iter().map(|c| Column::right(c.header)))
            .collect(),
    );
    for r in rows {
        let mut cells: Vec<Cell> = r.keys.iter().map(|k| Cell::from(k.as_str())).collect();
        for (c, v) in spec.values.iter().zip(&r.values) {
            cells.push(Cell::from(v.map_or("-".to_owned(), |v| c.unit.format(v))));
        }
        t.rows.push(cells);
    }
    t
}

/// The rows as JSON objects: key labels by name, values exact (`null` where missing).
pub fn top_json(spec: &Spec, rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let mut o = Map::new();
                for ((_, label), k) in spec.keys.iter().zip(&r.keys) {
                    o.insert((*label).to_owned(), json!(k));
                }
                for (c, v) in spec.values.iter().zip(&r.values) {
                    o.insert(c.json.to_owned(), v.map_or(Value::Null, |v| json!(v)));
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// Runs `view`'s queries against the collector.
pub fn top(client: &Client, view: View, o: &TopOptions) -> Result<(Spec, Vec<Row>), Error> {
    let spec = spec(view, o);
    let answers = spec
        .queries
        .iter()
        .map(|q| client.query_vector(q))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = assemble(&spec, &answers);
    Ok((spec, rows))
}

/// The shipper inventory as `kappie shippers` shows it.
pub struct ShipperReport {
    pub table: Table,
    /// The API's entries, sorted the same way, each with `"stale"` added.
    pub json: Value,
    pub any_stale: bool,
}

/// Whether a shipper has not pushed for longer than `stale` (one that never pushed is).
pub fn is_stale(s: &Shipper, stale: Duration) -> bool {
    s.last_push_age_seconds
        .is_none_or(|age| age > stale.as_secs_f64())
}

/// The entries of `cluster` (all without one), sorted by node and then shipper id.
pub fn shipper_report(
    entries: Vec<(Value, Shipper)>,
    cluster: Option<&str>,
    stale: Duration,
) -> ShipperReport {
    let mut entries: Vec<(Value, Shipper)> = entries
        .into_iter()
        .filter(|(_, s)| cluster.is_none_or(|c| s.cluster == c))
        .collect();
    entries.sort_by(|(_, a), (_, b)| {
        (&a.node_name, &a.shipper_id).cmp(&(&b.node_name, &b.shipper_id))
    });
    let mut table = Table::new(vec![
        Column::left("NODE"),
        Column::left("CLUSTER"),
        Column::left("SHIPPER"),
        Column::right("LAST PUSH"),
        Column::right("SEQUENCE"),
        Column::right("SERIES"),
        Column::right("SAMPLES/MIN"),
        Column::left("VERSION"),
        Column::left("STATUS"),
    ]);
    let mut json = Vec::new();
    let mut any_stale = false;
    for (mut raw, s) in entries {
        let is = is_stale(&s, stale);
        any_stale |= is;
        table.rows.push(vec![
            Cell::from(s.node_name.as_str()),
            Cell::from(s.cluster.as_str()),
            Cell::from(s.shipper_id.as_str()),
            Cell::from(table::age(s.last_push_age_seconds)),
            Cell::from(s.last_sequence.to_string()),
            Cell::from(s.series.to_string()),
            Cell::from(s.samples_last_minute.to_string()),
            Cell::from(s.version.as_str()),
            if is {
                Cell::warn("STALE")
            } else {
                Cell::from("ok")
            },
        ]);
        if let Value::Object(o) = &mut raw {
            o.insert("stale".to_owned(), Value::Bool(is));
        }
        json.push(raw);
    }
    ShipperReport {
        table,
        json: Value::Array(json),
        any_stale,
    }
}

/// `GET /api/v1/kappie/shippers`, reported.
pub fn shippers(
    client: &Client,
    cluster: Option<&str>,
    stale: Duration,
) -> Result<ShipperReport, Error> {
    let raw = client.shippers()?;
    let entries = raw
        .into_iter()
        .map(|v| {
            let s: Shipper = client.decode("/api/v1/kappie/shippers", v.clone())?;
            Ok((v, s))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(shipper_report(entries, cluster, stale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Labels, Point};

    fn opts() -> TopOptions {
        TopOptions {
            filter: Filter {
                cluster: Some("prod".into()),
                node: Some("node-.*".into()),
            },
            since: Duration::from_secs(300),
            limit: 3,
        }
    }

    #[test]
    fn drop_queries_rank_by_count_and_restrict_bytes_to_the_same_groups() {
        let s = spec(View::Drops, &opts());
        let m = r#"{cluster="prod",node_name=~"node-.*"}"#;
        let rank =
            format!("sum by (node_name, reason, direction) (rate(kappie_drop_count{m}[300s]))");
        assert_eq!(s.queries[0], format!("topk(3, {rank})"));
        assert_eq!(
            s.queries[1],
            format!(
                "sum by (node_name, reason, direction) (rate(kappie_drop_bytes{m}[300s])) \
                 and on (node_name, reason, direction) topk(3, {rank})"
            )
        );
    }

    #[test]
    fn remote_queries_leave_out_the_other_bucket() {
        let s = spec(View::Remotes, &opts());
        assert_eq!(
            s.queries[0],
            r#"topk(3, sum by (address, port) (kappie_tcp_connection_remote{address!="other",cluster="prod",node_name=~"node-.*"}))"#
        );
        assert!(
            s.queries[1].starts_with("count by (address, port) ("),
            "{}",
            s.queries[1]
        );
    }

    #[test]
    fn interface_queries_ask_for_the_six_statistics() {
        let s = spec(
            View::Interfaces,
            &TopOptions {
                filter: Filter::default(),
                ..opts()
            },
        );
        assert_eq!(
            s.queries[0],
            r#"topk(3, sum by (node_name, interface_name) (rate(kappie_interface_stats{statistic_name=~"rx_bytes|tx_bytes"}[300s])))"#
        );
        assert!(s.queries[1].starts_with(
            r#"sum by (node_name, interface_name, statistic_name) (rate(kappie_interface_stats{statistic_name=~"rx_bytes|tx_bytes|rx_errors|tx_errors|rx_dropped|tx_dropped"}[300s])) and on (node_name, interface_name) topk(3, "#
        ), "{}", s.queries[1]);
    }

    fn sample(labels: &[(&str, &str)], v: &str) -> Sample {
        Sample {
            metric: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Labels>(),
            value: Point(0.0, v.into()),
        }
    }

    #[test]
    fn rows_are_ranked_joined_and_missing_values_shown_as_dashes() {
        let s = spec(View::Nodes, &opts());
        let a_in = [("node_name", "a"), ("direction", "ingress")];
        let b_eg = [("node_name", "b"), ("direction", "egress")];
        let c_in = [("node_name", "c"), ("direction", "ingress")];
        let answers = vec![
            vec![
                sample(&a_in, "100"),
                sample(&b_eg, "2500"),
                sample(&c_in, "100"),
            ],
            vec![
                sample(&b_eg, "10"),
                sample(&a_in, "1"),
                sample(&c_in, "0.5"),
            ],
            vec![sample(&b_eg, "0.25")],
        ];
        let rows = assemble(&s, &answers);
        let keys: Vec<&[String]> = rows.iter().map(|r| r.keys.as_slice()).collect();
        assert_eq!(keys, [["b", "egress"], ["a", "ingress"], ["c", "ingress"]]);
        assert_eq!(rows[0].values, [Some(2500.0), Some(10.0), Some(0.25)]);
        assert_eq!(rows[1].values, [Some(100.0), Some(1.0), None]);
        assert_eq!(
            top_table(&s, &rows).render(false),
            [
                "NODE  DIRECTION     BYTES    PACKETS       DROPS",
                "b     egress     2.5 kB/s   10 pkt/s  0.25 pkt/s",
                "a     ingress     100 B/s    1 pkt/s           -",
                "c     ingress     100 B/s  0.5 pkt/s           -",
                "",
            ]
            .join("\n")
        );
        let j = top_json(&s, &rows);
        assert_eq!(j[0]["node_name"], "b");
        assert_eq!(j[0]["bytesPerSecond"], 2500.0);
        assert_eq!(j[1]["dropsPerSecond"], Value::Null);
    }

    #[test]
    fn interface_statistics_pivot_into_columns() {
        let s = spec(View::Interfaces, &opts());
        let k = [("node_name", "a"), ("interface_name", "eth0")];
        let stat = |name: &'static str, v: &str| {
            let mut l = k.to_vec();
            l.push(("statistic_name", name));
            sample(&l, v)
        };
        let answers = vec![
            vec![sample(&k, "3000")],
            vec![
                stat("tx_bytes", "2000"),
                stat("rx_bytes", "1000"),
                stat("rx_errors", "0.5"),
            ],
        ];
        let rows = assemble(&s, &answers);
        assert_eq!(
            rows[0].values,
            [
                Some(3000.0),
                Some(1000.0),
                Some(2000.0),
                Some(0.5),
                None,
                None,
                None
            ]
        );
    }

    fn shipper(node: &str, id: &str, cluster: &str, age: Option<f64>) -> (Value, Shipper) {
        let v = json!({
            "shipperId": id, "nodeName": node, "cluster": cluster, "version": "1.0",
            "sessionStart": null, "lastSequence": 7, "lastPushTime": null,
            "lastPushAgeSeconds": age, "series": 3, "samplesLastMinute": 18
        });
        (v.clone(), serde_json::from_value(v).unwrap())
    }

    #[test]
    fn shippers_sort_by_node_and_stale_ones_are_marked() {
        let r = shipper_report(
            vec![
                shipper("node-b", "s1", "prod", Some(4.2)),
                shipper("node-a", "s2", "prod", Some(192.0)),
                shipper("node-c", "s3", "prod", None),
            ],
            None,
            Duration::from_secs(30),
        );
        assert!(r.any_stale);
        assert_eq!(
            r.table.render(false),
            "NODE    CLUSTER  SHIPPER  LAST PUSH  SEQUENCE  SERIES  SAMPLES/MIN  VERSION  STATUS\n\
             node-a  prod     s2           3m12s         7       3           18  1.0      STALE\n\
             node-b  prod     s1              4s         7       3           18  1.0      ok\n\
             node-c  prod     s3           never         7       3           18  1.0      STALE\n"
        );
        assert_eq!(r.json[0]["stale"], true);
        assert_eq!(r.json[1]["stale"], false);
        assert_eq!(r.json[1]["lastPushAgeSeconds"], 4.2);
    }

    #[test]
    fn shippers_of_other_clusters_are_left_out() {
        let r = shipper_report(
            vec![
                shipper("node-a", "s1", "lab", None),
                shipper("node-b", "s2", "prod", Some(1.0)),
            ],
            Some("prod"),
            Duration::from_secs(30),
        );
        assert!(!r.any_stale, "the stale one is in another cluster");
        assert_eq!(r.table.rows.len(), 1);
    }
}
