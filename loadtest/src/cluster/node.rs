//! One simulated node: the series its shipper reports (the twelve metrics of SPEC §1 with
//! their labels) and how their values move from one collection to the next.
//!
//! A node is drawn from a seed and its index, so a run is repeatable. It has an uplink
//! `eth0` (sysfs and driver statistics), `lo`, and 3 to 8 pod veths; 20 to 100 remotes plus
//! `address="other"`; 6 to 14 drop reasons. That makes 400 to 640 series, about 520 on
//! average. Counters move by whole numbers: busy ones by their rate times the interval,
//! scaled by the node's size, a slowly drifting per-series factor, the node's load (which
//! wanders and now and then bursts to 3 to 8 times for a few intervals) and ±25 % noise;
//! sparse ones are idle until a burst starts (3 % per interval) and goes on with
//! probability 1/2 per interval; zero ones stay at 0. Gauges wander around their level.
//!
//! Label strings are not kept per series: a [`Layout`] holds the node's small tables and
//! one [`Slot`] (metric and two table indices) per series, and builds a definition when one
//! is sent. The node keeps each counter's total and each gauge's last value (what it sent),
//! which the run compares with what the collector stores.

use super::catalog::{self, Class};
use crate::shapes::{hash, log_uniform, normal};
use kappie_proto::{CounterDelta, GaugeValue, Label, MetricType, SeriesDefinition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::Ipv4Addr;

/// The twelve metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    ForwardCount,
    ForwardBytes,
    DropCount,
    DropBytes,
    TcpState,
    TcpRemote,
    TcpStats,
    TcpFlags,
    IpStats,
    UdpStats,
    UdpSockets,
    InterfaceStats,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::ForwardCount,
        Metric::ForwardBytes,
        Metric::DropCount,
        Metric::DropBytes,
        Metric::TcpState,
        Metric::TcpRemote,
        Metric::TcpStats,
        Metric::TcpFlags,
        Metric::IpStats,
        Metric::UdpStats,
        Metric::UdpSockets,
        Metric::InterfaceStats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::ForwardCount => "kappie_forward_count",
            Metric::ForwardBytes => "kappie_forward_bytes",
            Metric::DropCount => "kappie_drop_count",
            Metric::DropBytes => "kappie_drop_bytes",
            Metric::TcpState => "kappie_tcp_state",
            Metric::TcpRemote => "kappie_tcp_connection_remote",
            Metric::TcpStats => "kappie_tcp_connection_stats",
            Metric::TcpFlags => "kappie_tcp_flag_counters",
            Metric::IpStats => "kappie_ip_connection_stats",
            Metric::UdpStats => "kappie_udp_connection_stats",
            Metric::UdpSockets => "kappie_udp_active_sockets",
            Metric::InterfaceStats => "kappie_interface_stats",
        }
    }

    pub fn is_counter(self) -> bool {
        !matches!(
            self,
            Metric::TcpState | Metric::TcpRemote | Metric::UdpSockets
        )
    }
}

/// One series: its metric and indices into the tables its labels come from.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub metric: Metric,
    a: u16,
    b: u16,
}

/// What a node reports, without values.
pub struct Layout {
    pub node_name: String,
    pub cluster: String,
    interfaces: Vec<String>,
    remotes: Vec<(Ipv4Addr, u16)>,
    pub slots: Vec<Slot>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Model {
    Busy,
    Sparse,
    Zero,
    Gauge,
}

/// Value state of one series, 32 bytes.
struct State {
    /// Counters: the total sent. Gauges: the last value sent.
    value: f64,
    /// Busy counters: rate per second; sparse: rate while bursting; gauges: level.
    base: f32,
    /// Busy counters: log of the drifting factor.
    drift: f32,
    model: Model,
    burst: bool,
}

/// A node: its layout and the values it has sent.
pub struct Node {
    layout: std::sync::Arc<Layout>,
    states: Vec<State>,
    rng: StdRng,
    /// The node's load factor and how many more intervals its burst lasts.
    load: f64,
    burst_left: u32,
}

impl Node {
    /// Node `index` of a cluster drawn from `seed`.
    pub fn new(seed: u64, index: usize, cluster: &str) -> Node {
        let mut rng = StdRng::seed_from_u64(hash(seed, index as u64));
        let pods = rng.gen_range(3..=8);
        let mut interfaces = vec!["eth0".to_owned(), "lo".to_owned()];
        for _ in 0..pods {
            interfaces.push(format!("veth{:08x}", rng.gen::<u32>()));
        }
        // Remotes come from one cluster-wide pool of service and pod addresses, so nodes
        // share label values as they do in a cluster.
        let n_remotes = rng.gen_range(20..=100);
        let mut remotes = Vec::with_capacity(n_remotes);
        while remotes.len() < n_remotes {
            let k = rng.gen_range(0..4_000u32);
            let r = (
                Ipv4Addr::from(0x0a60_0000 + k),
                catalog::REMOTE_PORTS[(k % 10) as usize],
            );
            if !remotes.contains(&r) {
                remotes.push(r);
            }
        }
        let mut reasons: Vec<u16> = (0..catalog::DROP_REASONS.len() as u16).collect();
        // A partial Fisher-Yates shuffle picks 6 to 14 distinct reasons.
        let n_reasons = rng.gen_range(6..=14);
        for i in 0..n_reasons {
            let j = rng.gen_range(i..reasons.len());
            reasons.swap(i, j);
        }
        reasons.truncate(n_reasons);
        reasons.sort_unstable();

        let mut slots = Vec::new();
        let mut push = |metric, a: usize, b: usize| {
            slots.push(Slot {
                metric,
                a: a as u16,
                b: b as u16,
            })
        };
        for d in 0..2 {
            push(Metric::ForwardCount, 0, d);
            push(Metric::ForwardBytes, 0, d);
        }
        for &r in &reasons {
            let dirs = match catalog::DROP_REASONS[r as usize].1 {
                2 => 0..2,
                d => d as usize..d as usize + 1,
            };
            for d in dirs {
                push(Metric::DropCount, r as usize, d);
                push(Metric::DropBytes, r as usize, d);
            }
        }
        for s in 0..catalog::TCP_STATES.len() {
            push(Metric::TcpState, s, 0);
        }
        for r in 0..=remotes.len() {
            push(Metric::TcpRemote, r, 0);
        }
        for s in 0..catalog::TCP_STATS.len() {
            push(Metric::TcpStats, s, 0);
        }
        for f in 0..catalog::FLAGS.len() {
            for d in 0..2 {
                push(Metric::TcpFlags, f, d);
            }
        }
        for s in 0..catalog::IP_STATS.len() {
            push(Metric::IpStats, s, 0);
        }
        for s in 0..catalog::UDP_STATS.len() {
            push(Metric::UdpStats, s, 0);
        }
        push(Metric::UdpSockets, 0, 0);
        for i in 0..interfaces.len() {
            let n = catalog::SYSFS_STATS.len()
                + if i == 0 {
                    catalog::ETHTOOL_STATS.len()
                } else {
                    0
                };
            for s in 0..n {
                push(Metric::InterfaceStats, i, s);
            }
        }

        let layout = Layout {
            node_name: format!("node-{index:05}"),
            cluster: cluster.to_owned(),
            interfaces,
            remotes,
            slots,
        };
        // How busy this node is next to the average one.
        let size = log_uniform(&mut rng, 0.1, 10.0);
        let veth_scale: Vec<f64> = (0..layout.interfaces.len())
            .map(|i| match i {
                0 => 1.0,
                1 => 0.3,
                _ => log_uniform(&mut rng, 0.02, 0.5),
            })
            .collect();
        let states = layout
            .slots
            .iter()
            .map(|s| {
                let jitter = log_uniform(&mut rng, 0.5, 2.0);
                let counter = |class: Class, scale: f64| match class {
                    Class::Busy(r) => (Model::Busy, r as f64 * scale * jitter),
                    Class::Sparse(r) => (Model::Sparse, r as f64 * scale.sqrt() * jitter),
                    Class::Zero => (Model::Zero, 0.0),
                };
                let (model, base) = match s.metric {
                    Metric::ForwardCount => counter(Class::Busy(6_000.0), size),
                    Metric::ForwardBytes => counter(Class::Busy(6e6), size),
                    Metric::DropCount => {
                        counter(Class::Sparse(catalog::DROP_REASONS[s.a as usize].2), size)
                    }
                    Metric::DropBytes => counter(
                        Class::Sparse(catalog::DROP_REASONS[s.a as usize].2 * 120.0),
                        size,
                    ),
                    Metric::TcpStats => counter(catalog::TCP_STATS[s.a as usize].1, size),
                    Metric::IpStats => counter(catalog::IP_STATS[s.a as usize].1, size),
                    Metric::UdpStats => counter(catalog::UDP_STATS[s.a as usize].1, size),
                    Metric::TcpFlags => match catalog::FLAGS[s.a as usize].1 {
                        0.0 => (Model::Zero, 0.0),
                        share => counter(Class::Busy(6_000.0 * share), size),
                    },
                    Metric::InterfaceStats => {
                        let class = match catalog::SYSFS_STATS.get(s.b as usize) {
                            Some(c) => c.1,
                            None => {
                                catalog::ETHTOOL_STATS[s.b as usize - catalog::SYSFS_STATS.len()].1
                            }
                        };
                        counter(class, size * veth_scale[s.a as usize])
                    }
                    Metric::TcpState => (
                        Model::Gauge,
                        catalog::TCP_STATES[s.a as usize].1 as f64 * size.sqrt() * jitter,
                    ),
                    Metric::TcpRemote => (Model::Gauge, log_uniform(&mut rng, 1.0, 200.0)),
                    Metric::UdpSockets => (Model::Gauge, log_uniform(&mut rng, 5.0, 100.0)),
                };
                State {
                    value: if model == Model::Gauge {
                        base.round()
                    } else {
                        0.0
                    },
                    base: base as f32,
                    drift: 0.0,
                    model,
                    burst: false,
                }
            })
            .collect();
        Node {
            layout: std::sync::Arc::new(layout),
            states,
            rng,
            load: 1.0,
            burst_left: 0,
        }
    }

    pub fn layout(&self) -> std::sync::Arc<Layout> {
        self.layout.clone()
    }

    pub fn series(&self) -> usize {
        self.states.len()
    }

    /// One collection `interval_s` seconds after the previous: the counters' increases and
    /// the gauges' values, by reference (series index + 1).
    pub fn step(
        &mut self,
        interval_s: f64,
        deltas: &mut Vec<CounterDelta>,
        gauges: &mut Vec<GaugeValue>,
    ) {
        let rng = &mut self.rng;
        if self.burst_left > 0 {
            self.burst_left -= 1;
        } else if rng.gen_bool(0.02) {
            self.burst_left = rng.gen_range(1..=6);
        }
        // The load wanders around 1 (a mean-reverting walk of its log).
        self.load = (0.9 * self.load.ln() + 0.1 * normal(rng)).exp();
        let load = self.load
            * if self.burst_left > 0 {
                rng.gen_range(3.0..8.0)
            } else {
                1.0
            };
        for (i, s) in self.states.iter_mut().enumerate() {
            let r = i as u32 + 1;
            match s.model {
                Model::Busy => {
                    s.drift = 0.95 * s.drift + 0.05 * normal(rng) as f32;
                    let mean = s.base as f64 * (s.drift as f64).exp() * load * interval_s;
                    let d = (mean * (1.0 + 0.25 * normal(rng))).round().max(0.0);
                    s.value += d;
                    deltas.push(CounterDelta { r#ref: r, delta: d });
                }
                Model::Sparse => {
                    s.burst = if s.burst {
                        rng.gen_bool(0.5)
                    } else {
                        rng.gen_bool(0.03)
                    };
                    let d = if s.burst {
                        (s.base as f64 * interval_s * load * rng.gen_range(0.2..3.0))
                            .round()
                            .max(1.0)
                    } else {
                        0.0
                    };
                    s.value += d;
                    deltas.push(CounterDelta { r#ref: r, delta: d });
                }
                Model::Zero => deltas.push(CounterDelta {
                    r#ref: r,
                    delta: 0.0,
                }),
                Model::Gauge => {
                    let level = s.base as f64 * load.sqrt();
                    let step = 0.2 * (level - s.value) + (1.0 + 0.05 * s.value) * normal(rng);
                    s.value = (s.value + step).round().max(0.0);
                    gauges.push(GaugeValue {
                        r#ref: r,
                        value: s.value,
                        stale: false,
                    });
                }
            }
        }
    }

    /// Each series' metric and value sent so far (the total of a counter, the last value of
    /// a gauge), by series index.
    pub fn values(&self) -> impl Iterator<Item = (Metric, f64)> + '_ {
        self.layout
            .slots
            .iter()
            .zip(&self.states)
            .map(|(s, st)| (s.metric, st.value))
    }
}

impl Layout {
    /// Labels of series `i` besides `__name__`, `node_name` and `cluster` first.
    pub fn labels(&self, i: usize) -> Vec<(&'static str, String)> {
        let s = self.slots[i];
        let (a, b) = (s.a as usize, s.b as usize);
        let mut l = vec![
            ("node_name", self.node_name.clone()),
            ("cluster", self.cluster.clone()),
        ];
        match s.metric {
            Metric::ForwardCount | Metric::ForwardBytes => {
                l.push(("direction", catalog::DIRECTIONS[b].into()))
            }
            Metric::DropCount | Metric::DropBytes => {
                l.push(("reason", catalog::DROP_REASONS[a].0.into()));
                l.push(("direction", catalog::DIRECTIONS[b].into()));
            }
            Metric::TcpState => l.push(("state", catalog::TCP_STATES[a].0.into())),
            Metric::TcpRemote => match self.remotes.get(a) {
                Some((addr, port)) => {
                    l.push(("address", addr.to_string()));
                    l.push(("port", port.to_string()));
                }
                None => l.push(("address", "other".into())),
            },
            Metric::TcpStats => l.push(("statistic_name", catalog::TCP_STATS[a].0.into())),
            Metric::TcpFlags => {
                l.push(("flag", catalog::FLAGS[a].0.into()));
                l.push(("direction", catalog::DIRECTIONS[b].into()));
            }
            Metric::IpStats => l.push(("statistic_name", catalog::IP_STATS[a].0.into())),
            Metric::UdpStats => l.push(("statistic_name", catalog::UDP_STATS[a].0.into())),
            Metric::UdpSockets => {}
            Metric::InterfaceStats => {
                l.push(("interface_name", self.interfaces[a].clone()));
                let stat = match catalog::SYSFS_STATS.get(b) {
                    Some(s) => s.0,
                    None => catalog::ETHTOOL_STATS[b - catalog::SYSFS_STATS.len()].0,
                };
                l.push(("statistic_name", stat.into()));
            }
        }
        l
    }

    /// The definition of series `i` (reference `i + 1`).
    pub fn definition(&self, i: usize) -> SeriesDefinition {
        let metric = self.slots[i].metric;
        SeriesDefinition {
            r#ref: i as u32 + 1,
            metric: metric.name().into(),
            r#type: if metric.is_counter() {
                MetricType::Counter
            } else {
                MetricType::Gauge
            } as i32,
            labels: self
                .labels(i)
                .into_iter()
                .map(|(n, v)| Label {
                    name: n.into(),
                    value: v,
                })
                .collect(),
        }
    }

    /// `metric{name="value",…}` of series `i` with the labels sorted: the key the
    /// verification matches the collector's answer by.
    pub fn key(&self, i: usize) -> String {
        let mut labels: Vec<(String, String)> = self
            .labels(i)
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        series_key(self.slots[i].metric.name(), &mut labels)
    }
}

/// `metric{a="1",b="2"}` with the labels sorted by name.
pub fn series_key(metric: &str, labels: &mut [(String, String)]) -> String {
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{metric}{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nodes_have_400_to_640_series_of_all_twelve_metrics() {
        let mut total = 0;
        for i in 0..200 {
            let n = Node::new(7, i, "c");
            assert!(
                (400..=640).contains(&n.series()),
                "node {i}: {}",
                n.series()
            );
            let metrics: HashSet<Metric> = n.layout.slots.iter().map(|s| s.metric).collect();
            assert_eq!(metrics.len(), 12);
            total += n.series();
        }
        let mean = total / 200;
        assert!((450..=560).contains(&mean), "mean {mean}");
    }

    #[test]
    fn a_node_defines_each_label_set_once_with_node_and_cluster() {
        let n = Node::new(1, 3, "prod");
        let l = n.layout();
        let keys: HashSet<String> = (0..n.series()).map(|i| l.key(i)).collect();
        assert_eq!(keys.len(), n.series());
        for i in 0..n.series() {
            let d = l.definition(i);
            assert_eq!(d.r#ref, i as u32 + 1);
            assert!(d
                .labels
                .iter()
                .any(|x| x.name == "node_name" && x.value == "node-00003"));
            assert!(d
                .labels
                .iter()
                .any(|x| x.name == "cluster" && x.value == "prod"));
        }
    }

    #[test]
    fn counters_move_by_whole_non_negative_numbers_and_totals_add_up() {
        let mut n = Node::new(2, 0, "c");
        let mut sums = vec![0.0; n.series()];
        for _ in 0..100 {
            let (mut d, mut g) = (Vec::new(), Vec::new());
            n.step(10.0, &mut d, &mut g);
            assert_eq!(d.len() + g.len(), n.series());
            for c in d {
                assert!(c.delta >= 0.0 && c.delta.fract() == 0.0, "{}", c.delta);
                sums[c.r#ref as usize - 1] += c.delta;
            }
            for v in g {
                assert!(v.value >= 0.0 && v.value.is_finite());
                sums[v.r#ref as usize - 1] = v.value;
            }
        }
        for (i, (_, v)) in n.values().enumerate() {
            assert_eq!(v, sums[i], "series {i}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_node() {
        let (mut a, mut b) = (Node::new(5, 9, "c"), Node::new(5, 9, "c"));
        let (mut da, mut db, mut g) = (Vec::new(), Vec::new(), Vec::new());
        a.step(10.0, &mut da, &mut g);
        b.step(10.0, &mut db, &mut g);
        assert_eq!(da, db);
        assert_eq!(a.layout().key(100), b.layout().key(100));
    }
}
