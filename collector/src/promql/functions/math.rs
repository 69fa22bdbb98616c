//! Element-wise math, clamping and rounding, and the calendar functions.

use super::{map_vector, scalar_arg, vector_arg};
use crate::promql::eval::Evaluator;
use crate::promql::value::{Sample, StepValue};
use crate::promql::EvalError;
use kappie_storage::Labels;
use promql_parser::parser::Expr;
use std::sync::Arc;

type Args<'a> = &'a [Box<Expr>];
type Out = Result<StepValue, EvalError>;

macro_rules! elementwise {
    ($($name:ident => $f:expr;)*) => {$(
        pub(crate) fn $name(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
            map_vector(ev, args, 0, ts, $f)
        }
    )*};
}

elementwise! {
    abs => f64::abs;
    ceil => f64::ceil;
    floor => f64::floor;
    exp => f64::exp;
    sqrt => f64::sqrt;
    ln => f64::ln;
    log2 => f64::log2;
    log10 => f64::log10;
    sin => f64::sin;
    cos => f64::cos;
    tan => f64::tan;
    asin => f64::asin;
    acos => f64::acos;
    atan => f64::atan;
    sinh => f64::sinh;
    cosh => f64::cosh;
    tanh => f64::tanh;
    asinh => f64::asinh;
    acosh => f64::acosh;
    atanh => f64::atanh;
    deg => |v: f64| v * 180.0 / std::f64::consts::PI;
    rad => |v: f64| v * std::f64::consts::PI / 180.0;
    sgn => |v: f64| if v < 0.0 { -1.0 } else if v > 0.0 { 1.0 } else { v };
}

pub(crate) fn pi(_: &mut Evaluator, _: Args, _: i64) -> Out {
    Ok(StepValue::Scalar(std::f64::consts::PI))
}

pub(crate) fn time(_: &mut Evaluator, _: Args, ts: i64) -> Out {
    Ok(StepValue::Scalar(ts as f64 / 1000.0))
}

/// `round(v, to_nearest=1)`: ties round up, as Prometheus's `floor(v/n + 0.5) * n`.
pub(crate) fn round(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let nearest = if args.len() > 1 {
        scalar_arg(ev, args, 1, ts)?
    } else {
        1.0
    };
    let inv = 1.0 / nearest;
    map_vector(ev, args, 0, ts, |v| (v * inv + 0.5).floor() / inv)
}

/// Go's `math.Max`/`math.Min`, which (unlike Rust's) return NaN when either side is NaN.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

pub(crate) fn clamp(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let min = scalar_arg(ev, args, 1, ts)?;
    let max = scalar_arg(ev, args, 2, ts)?;
    if max < min {
        return Ok(StepValue::Vector(Vec::new()));
    }
    map_vector(ev, args, 0, ts, |v| go_max(min, go_min(max, v)))
}

pub(crate) fn clamp_max(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let max = scalar_arg(ev, args, 1, ts)?;
    map_vector(ev, args, 0, ts, |v| go_min(max, v))
}

pub(crate) fn clamp_min(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let min = scalar_arg(ev, args, 1, ts)?;
    map_vector(ev, args, 0, ts, |v| go_max(min, v))
}

/// A calendar field of each value read as Unix seconds (UTC); without an argument, of the
/// evaluation time.
fn calendar(ev: &mut Evaluator, args: Args, ts: i64, f: fn(Civil) -> f64) -> Out {
    if args.is_empty() {
        return Ok(StepValue::Vector(vec![Sample {
            labels: Arc::new(Labels::default()),
            v: f(Civil::from_unix(ts.div_euclid(1000))),
            t: ts,
        }]));
    }
    let v = vector_arg(ev, args, 0, ts)?;
    Ok(StepValue::Vector(
        v.into_iter()
            .map(|s| Sample {
                labels: Arc::new(s.labels.without_name()),
                v: f(Civil::from_unix(s.v as i64)),
                t: ts,
            })
            .collect(),
    ))
}

macro_rules! calendar_fns {
    ($($name:ident => $f:expr;)*) => {$(
        pub(crate) fn $name(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
            calendar(ev, args, ts, $f)
        }
    )*};
}

calendar_fns! {
    year => |c| c.year as f64;
    month => |c| c.month as f64;
    day_of_month => |c| c.day as f64;
    day_of_week => |c| c.weekday as f64;
    day_of_year => |c| c.yday as f64;
    days_in_month => |c| days_in_month_of(c.year, c.month) as f64;
    hour => |c| c.hour as f64;
    minute => |c| c.minute as f64;
}

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    /// 0 = Sunday.
    weekday: i64,
    /// 1-based day of the year.
    yday: i64,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month_of(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Civil {
    /// Howard Hinnant's `civil_from_days`.
    fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86400);
        let sod = secs.rem_euclid(86400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let cum: i64 = (1..month).map(|m| days_in_month_of(year, m)).sum();
        Civil {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod % 3600 / 60,
            weekday: (days + 4).rem_euclid(7),
            yday: cum + day,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Civil;

    #[test]
    fn civil_time_of_known_instants() {
        // 2024-02-29T13:45:00Z was a Thursday, the 60th day of a leap year.
        let c = Civil::from_unix(1_709_214_300);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.weekday, c.yday),
            (2024, 2, 29, 13, 45, 4, 60)
        );
        let e = Civil::from_unix(0);
        assert_eq!(
            (e.year, e.month, e.day, e.weekday, e.yday),
            (1970, 1, 1, 4, 1)
        );
        let n = Civil::from_unix(-1);
        assert_eq!(
            (n.year, n.month, n.day, n.hour, n.minute),
            (1969, 12, 31, 23, 59)
        );
    }
}
