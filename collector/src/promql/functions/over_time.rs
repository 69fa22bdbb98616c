//! The `*_over_time` family: one value per series from the samples of its window.

use super::labels::absent_labels;
use super::{kahan_inc, map_range, matrix_arg, scalar_arg, unwrap_paren};
use crate::promql::eval::Evaluator;
use crate::promql::value::{Sample, StepValue};
use crate::promql::{aggregate, quantile, EvalError};
use promql_parser::parser::Expr;
use std::sync::Arc;

type Args<'a> = &'a [Box<Expr>];
type Out = Result<StepValue, EvalError>;

fn values(p: &[(i64, f64)]) -> Vec<f64> {
    p.iter().map(|x| x.1).collect()
}

pub(crate) fn avg_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| Some(aggregate::mean(&values(p))))
}

pub(crate) fn sum_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| {
        let (s, c) = p.iter().fold((0.0, 0.0), |(s, c), x| kahan_inc(x.1, s, c));
        Some(if s.is_infinite() { s } else { s + c })
    })
}

pub(crate) fn count_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| Some(p.len() as f64))
}

pub(crate) fn min_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| {
        Some(
            p.iter()
                .fold(p[0].1, |m, x| if x.1 < m || m.is_nan() { x.1 } else { m }),
        )
    })
}

pub(crate) fn max_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| {
        Some(
            p.iter()
                .fold(p[0].1, |m, x| if x.1 > m || m.is_nan() { x.1 } else { m }),
        )
    })
}

/// Variance with compensated sums, as Prometheus's `stdvar_over_time`.
fn variance(p: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in p {
        count += 1.0;
        let delta = v - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

pub(crate) fn stdvar_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| Some(variance(p)))
}

pub(crate) fn stddev_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| Some(variance(p).sqrt()))
}

pub(crate) fn quantile_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let q = scalar_arg(ev, args, 0, ts)?;
    map_range(ev, args, 1, ts, |_, p| Some(quantile(q, values(p))))
}

pub(crate) fn present_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, _| Some(1.0))
}

/// The last sample's value; unlike the rest of the family it keeps the metric name.
pub(crate) fn last_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let m = matrix_arg(ev, args, 0, ts)?;
    Ok(StepValue::Vector(
        m.series
            .iter()
            .filter_map(|s| {
                s.points.last().map(|&(_, v)| Sample {
                    labels: s.labels.clone(),
                    v,
                    t: ts,
                })
            })
            .collect(),
    ))
}

/// 1 with the selector's equality labels when the window holds no sample of any series.
pub(crate) fn absent_over_time(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let m = matrix_arg(ev, args, 0, ts)?;
    if m.series.iter().any(|s| !s.points.is_empty()) {
        return Ok(StepValue::Vector(Vec::new()));
    }
    let labels = match unwrap_paren(&args[0]) {
        Expr::MatrixSelector(ms) => absent_labels(&ms.vs),
        _ => Default::default(),
    };
    Ok(StepValue::Vector(vec![Sample {
        labels: Arc::new(labels),
        v: 1.0,
        t: ts,
    }]))
}
