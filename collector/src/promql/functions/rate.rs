//! Functions over a range of one series' samples that look at its change: the extrapolated
//! `rate`/`increase`/`delta`, the two-sample `irate`/`idelta`, linear regression
//! (`deriv`, `predict_linear`), `resets`, `changes` and double exponential smoothing.

use super::{kahan_inc, map_range, scalar_arg, MatrixArg};
use crate::promql::eval::Evaluator;
use crate::promql::value::StepValue;
use crate::promql::{format_value, EvalError};
use promql_parser::parser::Expr;

type Args<'a> = &'a [Box<Expr>];
type Out = Result<StepValue, EvalError>;

pub(crate) fn rate(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |m, p| extrapolated(m, p, true, true))
}

pub(crate) fn increase(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |m, p| extrapolated(m, p, true, false))
}

pub(crate) fn delta(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |m, p| extrapolated(m, p, false, false))
}

/// Prometheus's `extrapolatedRate`: the change over the samples, corrected for counter
/// resets, extrapolated towards the window's edges when the first and last samples lie
/// within 1.1 average intervals of them (never below a counter's zero point).
fn extrapolated(m: &MatrixArg, p: &[(i64, f64)], counter: bool, per_second: bool) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (first, last) = (p[0], p[p.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = 0.0;
        for &(_, v) in p {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let range_start = m.end - m.range;
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (m.end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg_step = sampled / (p.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    let mut factor = interval / sampled;
    if per_second {
        factor /= m.range as f64 / 1000.0;
    }
    Some(result * factor)
}

pub(crate) fn irate(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| instant_change(p, true))
}

pub(crate) fn idelta(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| instant_change(p, false))
}

/// The change between the last two samples: per second and reset-aware for `irate`.
fn instant_change(p: &[(i64, f64)], rate: bool) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (prev, last) = (p[p.len() - 2], p[p.len() - 1]);
    let mut v = if rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    let dt = last.0 - prev.0;
    if dt == 0 {
        return None;
    }
    if rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

/// Least-squares slope and intercept of the samples, with x in seconds from
/// `intercept_time`; a constant series has slope 0 (NaN when it is infinite).
fn linear_regression(p: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let init = p[0].1;
    let constant = p.iter().all(|&(_, v)| v == init);
    if constant {
        return if init.is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, init)
        };
    }
    let n = p.len() as f64;
    let (mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in p {
        let x = (t - intercept_time) as f64 / 1000.0;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

pub(crate) fn deriv(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| {
        (p.len() >= 2).then(|| linear_regression(p, p[0].0).0)
    })
}

pub(crate) fn predict_linear(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let secs = scalar_arg(ev, args, 1, ts)?;
    map_range(ev, args, 0, ts, |_, p| {
        (p.len() >= 2).then(|| {
            let (slope, intercept) = linear_regression(p, ts);
            slope * secs + intercept
        })
    })
}

pub(crate) fn resets(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| {
        Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64)
    })
}

pub(crate) fn changes(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    map_range(ev, args, 0, ts, |_, p| {
        Some(
            p.windows(2)
                .filter(|w| w[1].1 != w[0].1 && !(w[1].1.is_nan() && w[0].1.is_nan()))
                .count() as f64,
        )
    })
}

/// Holt's linear (double exponential) smoothing; Prometheus 2.42 calls it `holt_winters`.
pub(crate) fn double_exponential_smoothing(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let sf = scalar_arg(ev, args, 1, ts)?;
    let tf = scalar_arg(ev, args, 2, ts)?;
    if sf <= 0.0 || sf >= 1.0 {
        return Err(EvalError::Execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
            format_value(sf)
        )));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(EvalError::Execution(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {}",
            format_value(tf)
        )));
    }
    map_range(ev, args, 0, ts, |_, p| {
        if p.len() < 2 {
            return None;
        }
        let (mut s0, mut s1) = (0.0, p[0].1);
        let mut b = p[1].1 - p[0].1;
        for (i, &(_, v)) in p.iter().enumerate().skip(1) {
            if i > 1 {
                b = tf * (s1 - s0) + (1.0 - tf) * b;
            }
            let next = sf * v + (1.0 - sf) * (s1 + b);
            s0 = s1;
            s1 = next;
        }
        Some(s1)
    })
}
