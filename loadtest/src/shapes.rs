//! Data shapes for the storage benchmarks: what the samples of Kappie-named series look like.
//!
//! Every series `i` has the metric `METRICS[i % 5]`, the node `node-{i % 100}` and the
//! statistic `Stat{i / 100}`, one sample per 10 s step. A series' samples depend only on
//! the shape, the seed and `i` (its own seeded RNG; timestamps shared by a node come from a
//! hash of node and step), so any split of the series between writers produces the same data.
//!
//! - `friendly`: the generator the figures before 2026-11-30 used. Exact 10 s timestamps;
//!   four metrics in five are counters growing by a pseudo-random 0..=4 per step,
//!   `kappie_tcp_state` is a gauge wandering between 100 and 115.
//! - `realistic`: shaped like what a node shipper sends. Timestamps are the step plus a
//!   delay of 0..=9 ms, the same for every series of a node in a step (a shipper stamps one
//!   collection cycle with one time). By metric:
//!   `kappie_tcp_connection_stats` and `kappie_ip_connection_stats` are packet counters:
//!   a rate per series drawn log-uniformly from 100..5,000 per step that drifts (x e^N(0, 0.05)
//!   per step), each step adding the rate x (1 + N(0, 0.25)), never below 0.
//!   `kappie_interface_stats` are byte counters, the same with a rate of 10^4..10^6.
//!   `kappie_drop_count` are drop counters: idle (+0) until a burst starts (probability 1 %
//!   per step), which adds 1..=500 per step and goes on with probability 1/2 per step.
//!   `kappie_tcp_state` are gauges from a level of 10..5,000 moving by round(N(0, 2)) per
//!   step, never below 0.
//! - `hostile`: no structure a codec could find. Each series' timestamps are the step plus
//!   a uniform 0..9,999 ms of its own; by metric: random floats in ±10^6 (two metrics), a
//!   counter growing by a uniform integer 0..2^40 per step, a float counter growing by a
//!   uniform 0..1,000 (a "seconds" counter), an integer gauge uniform in 0..2^32.
//!
//! Every value is finite: no NaN or stale markers (Prometheus's OpenMetrics import refuses
//! them).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const STEP_MS: i64 = 10_000;

pub const METRICS: [&str; 5] = [
    "kappie_tcp_connection_stats",
    "kappie_ip_connection_stats",
    "kappie_interface_stats",
    "kappie_drop_count",
    "kappie_tcp_state",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Friendly,
    Realistic,
    Hostile,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Friendly => "friendly",
            Shape::Realistic => "realistic",
            Shape::Hostile => "hostile",
        }
    }
}

/// Labels of series `i`, `__name__` first.
pub fn series_labels(i: usize) -> Vec<(String, String)> {
    vec![
        ("__name__".into(), METRICS[i % METRICS.len()].into()),
        ("cluster".into(), "bench".into()),
        ("node_name".into(), format!("node-{}", i % 100)),
        ("statistic_name".into(), format!("Stat{}", i / 100)),
    ]
}

/// A well-mixed 64-bit hash of two numbers (splitmix64's finalizer).
pub(crate) fn hash(i: u64, step: u64) -> u64 {
    let mut h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 31;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 29)
}

/// A standard normal variate (Box-Muller; `rand` 0.8 has no `rand_distr`).
pub(crate) fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A value between `lo` and `hi` whose logarithm is uniform.
pub(crate) fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    (rng.gen_range(lo.ln()..hi.ln())).exp()
}

/// State of one series.
struct Series {
    i: usize,
    rng: StdRng,
    value: f64,
    /// Counters' current mean increment per step.
    rate: f64,
    /// Drop counters: a burst is going on.
    burst: bool,
}

/// Generates the samples of a set of series, step after step.
pub struct Generator {
    shape: Shape,
    seed: u64,
    t0: i64,
    series: Vec<Series>,
}

impl Generator {
    /// Series `indices`, the first step at `t0` (ms).
    pub fn new(shape: Shape, seed: u64, t0: i64, indices: impl IntoIterator<Item = usize>) -> Self {
        let series = indices
            .into_iter()
            .map(|i| {
                let mut rng = StdRng::seed_from_u64(seed ^ hash(i as u64, u64::MAX));
                let (value, rate) = match (shape, i % METRICS.len()) {
                    (Shape::Friendly, 4) => (0.0, 0.0),
                    (Shape::Friendly, _) => ((i * 1000) as f64, 0.0),
                    (Shape::Realistic, 0 | 1) => (
                        rng.gen_range(0..1u64 << 36) as f64,
                        log_uniform(&mut rng, 100.0, 5_000.0),
                    ),
                    (Shape::Realistic, 2) => (
                        rng.gen_range(0..1u64 << 44) as f64,
                        log_uniform(&mut rng, 1e4, 1e6),
                    ),
                    (Shape::Realistic, 3) => (rng.gen_range(0..100_000u64) as f64, 0.0),
                    (Shape::Realistic, _) => (log_uniform(&mut rng, 10.0, 5_000.0).round(), 0.0),
                    (Shape::Hostile, 2) => (rng.gen_range(0..1u64 << 40) as f64, 0.0),
                    (Shape::Hostile, _) => (rng.gen_range(0.0..1e6), 0.0),
                };
                Series {
                    i,
                    rng,
                    value,
                    rate,
                    burst: false,
                }
            })
            .collect();
        Generator {
            shape,
            seed,
            t0,
            series,
        }
    }

    /// Samples `(series index, t ms, value)` of step `step`; steps must come in order from 0.
    pub fn step(&mut self, step: usize) -> impl Iterator<Item = (usize, i64, f64)> + '_ {
        let base = self.t0 + step as i64 * STEP_MS;
        let (shape, seed) = (self.shape, self.seed);
        self.series.iter_mut().map(move |s| {
            let (t, v) = next(shape, seed, base, step, s);
            (s.i, t, v)
        })
    }
}

fn next(shape: Shape, seed: u64, base: i64, step: usize, s: &mut Series) -> (i64, f64) {
    let kind = s.i % METRICS.len();
    match shape {
        Shape::Friendly => {
            let h = hash(s.i as u64, step as u64);
            if kind == 4 {
                s.value = (100 + (h >> 60)) as f64;
            } else if step > 0 {
                s.value += (h % 5) as f64;
            }
            (base, s.value)
        }
        Shape::Realistic => {
            let node = (s.i % 100) as u64;
            let t = base + (hash(node ^ seed.rotate_left(17), step as u64) % 10) as i64;
            if step > 0 {
                let rng = &mut s.rng;
                match kind {
                    0..=2 => {
                        s.rate *= (0.05 * normal(rng)).exp();
                        s.value += (s.rate * (1.0 + 0.25 * normal(rng))).round().max(0.0);
                    }
                    3 => {
                        if !s.burst {
                            s.burst = rng.gen_bool(0.01);
                        } else {
                            s.burst = rng.gen_bool(0.5);
                        }
                        if s.burst {
                            s.value += rng.gen_range(1..=500) as f64;
                        }
                    }
                    _ => s.value = (s.value + (2.0 * normal(rng)).round()).max(0.0),
                }
            }
            (t, s.value)
        }
        Shape::Hostile => {
            let rng = &mut s.rng;
            let t = base + rng.gen_range(0..STEP_MS);
            match kind {
                0 | 1 => s.value = rng.gen_range(-1e6..1e6),
                2 => s.value += rng.gen_range(0..1u64 << 40) as f64,
                3 => s.value += rng.gen_range(0.0..1_000.0),
                _ => s.value = rng.gen_range(0..1u64 << 32) as f64,
            }
            (t, s.value)
        }
    }
}

/// A whole data set in memory: each series' labels (`__name__` first) and its samples in
/// time order. Generated from a shape, or loaded from a recording of a real shipper
/// (`loadtest/record-busy-host.sh`).
pub struct Dataset {
    pub labels: Vec<Vec<(String, String)>>,
    pub samples: Vec<Vec<(i64, f64)>>,
}

impl Dataset {
    /// Series `0..n_series` of `shape`, `n_steps` steps from `t0` (ms).
    pub fn generate(shape: Shape, seed: u64, t0: i64, n_series: usize, n_steps: usize) -> Self {
        let mut samples = vec![Vec::with_capacity(n_steps); n_series];
        let mut g = Generator::new(shape, seed, t0, 0..n_series);
        for step in 0..n_steps {
            for (i, t, v) in g.step(step) {
                samples[i].push((t, v));
            }
        }
        Dataset {
            labels: (0..n_series).map(series_labels).collect(),
            samples,
        }
    }

    /// A recording (`record-dump`: a zstd-compressed remote-write `WriteRequest`), moved by
    /// whole hours so that its last sample lies in the hour before `end` (ms): the data
    /// keeps the position relative to hour boundaries (chunk windows) it was recorded with.
    pub fn load(path: &std::path::Path, end: i64) -> anyhow::Result<Self> {
        use prost::Message;
        let z = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the recording {}: {e}", path.display()))?;
        let raw = zstd::stream::decode_all(z.as_slice())?;
        let req = kappie_proto::prometheus::WriteRequest::decode(raw.as_slice())?;
        let last = req
            .timeseries
            .iter()
            .flat_map(|s| s.samples.last())
            .map(|s| s.timestamp)
            .max()
            .ok_or_else(|| anyhow::anyhow!("{} holds no samples", path.display()))?;
        const HOUR: i64 = 3_600_000;
        let shift = (end - last).div_euclid(HOUR) * HOUR;
        let mut d = Dataset {
            labels: Vec::new(),
            samples: Vec::new(),
        };
        for ts in req.timeseries {
            let mut labels: Vec<(String, String)> =
                ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
            // `__name__` first, the rest sorted (remote read sends them sorted).
            labels.sort_by(|a, b| (a.0 != "__name__", &a.0).cmp(&(b.0 != "__name__", &b.0)));
            d.labels.push(labels);
            d.samples.push(
                ts.samples
                    .into_iter()
                    .map(|s| (s.timestamp + shift, s.value))
                    .collect(),
            );
        }
        Ok(d)
    }

    pub fn series(&self) -> usize {
        self.labels.len()
    }

    pub fn total_samples(&self) -> usize {
        self.samples.iter().map(Vec::len).sum()
    }

    /// Samples per series of the longest series.
    pub fn steps(&self) -> usize {
        self.samples.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The `step`-th sample `(series index, t, value)` of every series among `indices`
    /// that has one.
    pub fn step<'a>(
        &'a self,
        step: usize,
        indices: impl IntoIterator<Item = usize> + 'a,
    ) -> impl Iterator<Item = (usize, i64, f64)> + 'a {
        indices
            .into_iter()
            .filter_map(move |i| self.samples[i].get(step).map(|&(t, v)| (i, t, v)))
    }

    /// Every sample as OpenMetrics text, as `promtool tsdb create-blocks-from openmetrics`
    /// reads it: each metric's series together, each series' samples in time order,
    /// timestamps in seconds.
    pub fn write_openmetrics(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut by_metric: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, l) in self.labels.iter().enumerate() {
            by_metric.entry(l[0].1.as_str()).or_default().push(i);
        }
        for (name, series) in by_metric {
            writeln!(out, "# TYPE {name} gauge")?;
            for i in series {
                let labels = self.labels[i][1..]
                    .iter()
                    .map(|(k, v)| {
                        let v = v
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n");
                        format!("{k}=\"{v}\"")
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                for &(t, v) in &self.samples[i] {
                    // f64's Display is the shortest text that parses back to the same bits.
                    let v = match v {
                        v if v.is_nan() => "NaN".to_string(),
                        f64::INFINITY => "+Inf".to_string(),
                        f64::NEG_INFINITY => "-Inf".to_string(),
                        v => v.to_string(),
                    };
                    writeln!(
                        out,
                        "{name}{{{labels}}} {v} {}.{:03}",
                        t.div_euclid(1000),
                        t.rem_euclid(1000)
                    )?;
                }
            }
        }
        writeln!(out, "# EOF")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_samples_do_not_depend_on_which_series_are_generated_with_it() {
        for shape in [Shape::Friendly, Shape::Realistic, Shape::Hostile] {
            let mut all = Generator::new(shape, 1, 0, 0..50);
            let mut one = Generator::new(shape, 1, 0, [37]);
            for step in 0..20 {
                let a: Vec<_> = all.step(step).filter(|s| s.0 == 37).collect();
                let b: Vec<_> = one.step(step).collect();
                assert_eq!(a, b, "{shape:?}");
            }
        }
    }

    #[test]
    fn timestamps_increase_and_values_are_finite() {
        for shape in [Shape::Friendly, Shape::Realistic, Shape::Hostile] {
            let mut g = Generator::new(shape, 2, 1_700_000_000_000, 0..100);
            let mut last = vec![i64::MIN; 100];
            for step in 0..400 {
                for (i, t, v) in g.step(step) {
                    assert!(t > last[i], "{shape:?} series {i} step {step}");
                    assert!(v.is_finite());
                    last[i] = t;
                }
            }
        }
    }

    /// A recording loads back with its labels, values and jitter, moved by whole hours.
    #[test]
    fn recordings_load_back_moved_by_whole_hours() {
        use kappie_proto::prometheus as pb;
        use prost::Message;
        let req = pb::WriteRequest {
            timeseries: vec![pb::TimeSeries {
                labels: vec![
                    pb::Label {
                        name: "zone".into(),
                        value: "a\"b".into(),
                    },
                    pb::Label {
                        name: "__name__".into(),
                        value: "kappie_x".into(),
                    },
                    pb::Label {
                        name: "node".into(),
                        value: "n".into(),
                    },
                ],
                samples: vec![
                    pb::Sample {
                        value: 1.5,
                        timestamp: 1_000_003,
                    },
                    pb::Sample {
                        value: 2.5,
                        timestamp: 1_010_007,
                    },
                ],
            }],
            ..Default::default()
        };
        let path =
            std::env::temp_dir().join(format!("kappie-recording-{}.pb.zst", std::process::id()));
        std::fs::write(
            &path,
            zstd::stream::encode_all(req.encode_to_vec().as_slice(), 3).unwrap(),
        )
        .unwrap();
        let d = Dataset::load(&path, 10 * 3_600_000 + 5).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(d.labels[0][0], ("__name__".into(), "kappie_x".into()));
        assert_eq!(d.labels[0][1].0, "node");
        let shift = 9 * 3_600_000;
        assert_eq!(
            d.samples[0],
            vec![(1_000_003 + shift, 1.5), (1_010_007 + shift, 2.5)]
        );
        let mut om = Vec::new();
        d.write_openmetrics(&mut om).unwrap();
        let om = String::from_utf8(om).unwrap();
        assert!(
            om.contains("kappie_x{node=\"n\",zone=\"a\\\"b\"} 1.5 33400.003\n"),
            "{om}"
        );
    }
}
