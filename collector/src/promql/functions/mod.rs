//! PromQL functions: one table from name to implementation, and the argument helpers the
//! implementations share. A function group lives in each file of this module.

mod histogram;
mod labels;
mod math;
mod over_time;
mod rate;

use super::eval::{ms, Evaluator};
use super::value::{RangeSeries, Sample, StepValue};
use super::EvalError;
use promql_parser::parser::{Call, Expr};
use std::collections::HashMap;
use std::sync::LazyLock;

/// A function's implementation: its (unevaluated) arguments and the evaluation time.
pub(crate) type FnImpl = fn(&mut Evaluator, &[Box<Expr>], i64) -> Result<StepValue, EvalError>;

/// Every function promql-parser accepts, with Kappie's implementation, or `None` for the
/// ones newer than Prometheus 2.42 (whose semantics Kappie follows), which fail with a
/// clear error. A test keeps this table equal to promql-parser's own list.
pub(crate) static FUNCTIONS: &[(&str, Option<FnImpl>)] = &[
    ("abs", Some(math::abs)),
    ("absent", Some(labels::absent)),
    ("absent_over_time", Some(over_time::absent_over_time)),
    ("acos", Some(math::acos)),
    ("acosh", Some(math::acosh)),
    ("asin", Some(math::asin)),
    ("asinh", Some(math::asinh)),
    ("atan", Some(math::atan)),
    ("atanh", Some(math::atanh)),
    ("avg_over_time", Some(over_time::avg_over_time)),
    ("ceil", Some(math::ceil)),
    ("changes", Some(rate::changes)),
    ("clamp", Some(math::clamp)),
    ("clamp_max", Some(math::clamp_max)),
    ("clamp_min", Some(math::clamp_min)),
    ("cos", Some(math::cos)),
    ("cosh", Some(math::cosh)),
    ("count_over_time", Some(over_time::count_over_time)),
    ("day_of_month", Some(math::day_of_month)),
    ("day_of_week", Some(math::day_of_week)),
    ("day_of_year", Some(math::day_of_year)),
    ("days_in_month", Some(math::days_in_month)),
    ("deg", Some(math::deg)),
    ("delta", Some(rate::delta)),
    ("deriv", Some(rate::deriv)),
    // Prometheus 2.42's holt_winters under its 3.x name; same algorithm.
    (
        "double_exponential_smoothing",
        Some(rate::double_exponential_smoothing),
    ),
    ("end", None),
    ("exp", Some(math::exp)),
    ("first_over_time", None),
    ("floor", Some(math::floor)),
    ("histogram_avg", None),
    ("histogram_count", Some(histogram::native_only)),
    ("histogram_fraction", Some(histogram::native_only)),
    ("histogram_quantile", Some(histogram::histogram_quantile)),
    ("histogram_quantiles", None),
    ("histogram_stddev", None),
    ("histogram_stdvar", None),
    ("histogram_sum", Some(histogram::native_only)),
    ("hour", Some(math::hour)),
    ("idelta", Some(rate::idelta)),
    ("increase", Some(rate::increase)),
    ("info", None),
    ("integral", None),
    ("irate", Some(rate::irate)),
    ("label_join", Some(labels::label_join)),
    ("label_replace", Some(labels::label_replace)),
    ("last_over_time", Some(over_time::last_over_time)),
    ("ln", Some(math::ln)),
    ("log10", Some(math::log10)),
    ("log2", Some(math::log2)),
    ("mad_over_time", None),
    ("max_of", None),
    ("max_over_time", Some(over_time::max_over_time)),
    ("min_of", None),
    ("min_over_time", Some(over_time::min_over_time)),
    ("minute", Some(math::minute)),
    ("month", Some(math::month)),
    ("pi", Some(math::pi)),
    ("predict_linear", Some(rate::predict_linear)),
    ("present_over_time", Some(over_time::present_over_time)),
    ("quantile_over_time", Some(over_time::quantile_over_time)),
    ("rad", Some(math::rad)),
    ("range", None),
    ("rate", Some(rate::rate)),
    ("resets", Some(rate::resets)),
    ("round", Some(math::round)),
    ("scalar", Some(labels::scalar)),
    ("sgn", Some(math::sgn)),
    ("sin", Some(math::sin)),
    ("sinh", Some(math::sinh)),
    ("sort", Some(labels::sort)),
    ("sort_by_label", None),
    ("sort_by_label_desc", None),
    ("sort_desc", Some(labels::sort_desc)),
    ("sqrt", Some(math::sqrt)),
    ("start", None),
    ("start_timestamp", None),
    ("stddev_over_time", Some(over_time::stddev_over_time)),
    ("stdvar_over_time", Some(over_time::stdvar_over_time)),
    ("step", None),
    ("sum_over_time", Some(over_time::sum_over_time)),
    ("tan", Some(math::tan)),
    ("tanh", Some(math::tanh)),
    ("time", Some(math::time)),
    ("timestamp", Some(labels::timestamp)),
    ("ts_of_first_over_time", None),
    ("ts_of_last_over_time", None),
    ("ts_of_max_over_time", None),
    ("ts_of_min_over_time", None),
    ("vector", Some(labels::vector)),
    ("year", Some(math::year)),
];

static BY_NAME: LazyLock<HashMap<&'static str, Option<FnImpl>>> =
    LazyLock::new(|| FUNCTIONS.iter().copied().collect());

pub(crate) fn call(ev: &mut Evaluator, c: &Call, ts: i64) -> Result<StepValue, EvalError> {
    match BY_NAME.get(c.func.name) {
        Some(Some(f)) => f(ev, &c.args.args, ts),
        Some(None) => Err(EvalError::Execution(format!(
            "function {:?} is not supported: it is newer than Prometheus 2.42, whose semantics Kappie follows",
            c.func.name
        ))),
        None => Err(EvalError::Execution(format!(
            "unknown function {:?}",
            c.func.name
        ))),
    }
}

/// The expression inside any parentheses.
pub(crate) fn unwrap_paren(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

fn arg(args: &[Box<Expr>], i: usize) -> Result<&Expr, EvalError> {
    args.get(i)
        .map(|b| &**b)
        .ok_or_else(|| EvalError::Execution(format!("missing argument {}", i + 1)))
}

pub(crate) fn vector_arg(
    ev: &mut Evaluator,
    args: &[Box<Expr>],
    i: usize,
    ts: i64,
) -> Result<Vec<Sample>, EvalError> {
    match ev.eval(arg(args, i)?, ts)? {
        StepValue::Vector(v) => Ok(v),
        other => Err(EvalError::Execution(format!(
            "expected an instant vector as argument {}, got {}",
            i + 1,
            other.type_name()
        ))),
    }
}

pub(crate) fn scalar_arg(
    ev: &mut Evaluator,
    args: &[Box<Expr>],
    i: usize,
    ts: i64,
) -> Result<f64, EvalError> {
    match ev.eval(arg(args, i)?, ts)? {
        StepValue::Scalar(v) => Ok(v),
        other => Err(EvalError::Execution(format!(
            "expected a scalar as argument {}, got {}",
            i + 1,
            other.type_name()
        ))),
    }
}

pub(crate) fn string_arg(args: &[Box<Expr>], i: usize) -> Result<String, EvalError> {
    match unwrap_paren(arg(args, i)?) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        _ => Err(EvalError::Execution(format!(
            "expected a string literal as argument {}",
            i + 1
        ))),
    }
}

/// A range-vector argument at one step, with the window it was cut to.
pub(crate) struct MatrixArg {
    pub series: Vec<RangeSeries>,
    /// The selector's (or subquery's) range in milliseconds.
    pub range: i64,
    /// The end of the window (evaluation time after `@` and `offset`).
    pub end: i64,
}

pub(crate) fn matrix_arg(
    ev: &mut Evaluator,
    args: &[Box<Expr>],
    i: usize,
    ts: i64,
) -> Result<MatrixArg, EvalError> {
    let e = unwrap_paren(arg(args, i)?);
    let (range, end) = match e {
        Expr::MatrixSelector(m) => (ms(&m.range), ev.ref_time(&m.vs.at, &m.vs.offset, ts)),
        Expr::Subquery(sq) => (ms(&sq.range), ev.ref_time(&sq.at, &sq.offset, ts)),
        _ => {
            return Err(EvalError::Execution(format!(
                "expected a range vector as argument {}",
                i + 1
            )))
        }
    };
    match ev.eval(e, ts)? {
        StepValue::Matrix(series) => Ok(MatrixArg { series, range, end }),
        other => Err(EvalError::Execution(format!(
            "expected a range vector as argument {}, got {}",
            i + 1,
            other.type_name()
        ))),
    }
}

/// Applies `f` to every element of the vector argument `i`, dropping the metric name.
pub(crate) fn map_vector(
    ev: &mut Evaluator,
    args: &[Box<Expr>],
    i: usize,
    ts: i64,
    f: impl Fn(f64) -> f64,
) -> Result<StepValue, EvalError> {
    let v = vector_arg(ev, args, i, ts)?;
    Ok(StepValue::Vector(
        v.into_iter()
            .map(|s| Sample {
                labels: ev.without_name(&s.labels),
                v: f(s.v),
                t: ts,
            })
            .collect(),
    ))
}

/// Applies `f` to the points of every series of the range-vector argument `i`; a series
/// for which `f` returns `None` is left out. The metric name is dropped.
pub(crate) fn map_range(
    ev: &mut Evaluator,
    args: &[Box<Expr>],
    i: usize,
    ts: i64,
    f: impl Fn(&MatrixArg, &[(i64, f64)]) -> Option<f64>,
) -> Result<StepValue, EvalError> {
    if i == 0 {
        if let Some(v) = ev.range_column(args, ts, &f)? {
            return Ok(StepValue::Vector(v));
        }
    }
    let m = matrix_arg(ev, args, i, ts)?;
    let mut out = Vec::with_capacity(m.series.len());
    for s in &m.series {
        if let Some(v) = f(&m, &s.points) {
            out.push(Sample {
                labels: ev.without_name(&s.labels),
                v,
                t: ts,
            });
        }
    }
    Ok(StepValue::Vector(out))
}

/// Neumaier-compensated summation step, as Prometheus's `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

#[cfg(test)]
mod tests {
    use super::FUNCTIONS;
    use std::collections::BTreeSet;

    /// The names promql-parser's own function table declares, read from the source of the
    /// version Cargo.lock pins, in cargo's registry (where the build got it from).
    fn parser_function_names() -> BTreeSet<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"promql-parser\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"').to_owned())
            .expect("promql-parser in Cargo.lock");
        let cargo_home = std::env::var("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                std::path::PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cargo")
            });
        let src = std::fs::read_dir(cargo_home.join("registry/src"))
            .expect("cargo registry sources")
            .filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .join(format!("promql-parser-{version}/src/parser/function.rs"))
            })
            .find(|p| p.exists())
            .expect("promql-parser's source in the cargo registry");
        let text = std::fs::read_to_string(&src).expect("read promql-parser's function.rs");
        // The table ends where the tests begin.
        let table = text.split("#[cfg(test)]").next().unwrap_or(&text);
        let mut names = BTreeSet::new();
        let mut rest = table;
        while let Some(i) = rest.find("function!(") {
            rest = &rest[i + "function!(".len()..];
            let trimmed = rest.trim_start();
            if let Some(body) = trimmed.strip_prefix('"') {
                if let Some(end) = body.find('"') {
                    names.insert(body[..end].to_owned());
                }
            }
        }
        names
    }

    #[test]
    fn function_table_matches_promql_parser() {
        let parser = parser_function_names();
        assert!(parser.len() > 60, "found only {} functions", parser.len());
        let ours: BTreeSet<String> = FUNCTIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            ours.len(),
            FUNCTIONS.len(),
            "a name appears twice in FUNCTIONS"
        );
        let missing: Vec<_> = parser.difference(&ours).collect();
        let extra: Vec<_> = ours.difference(&parser).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "FUNCTIONS drifted from promql-parser: missing {missing:?}, unknown to the parser {extra:?}"
        );
    }

    #[test]
    fn every_spec_function_is_implemented() {
        // SPEC §3's list, which must never be an unsupported entry.
        let spec = "rate irate increase delta idelta deriv resets changes predict_linear \
            avg_over_time min_over_time max_over_time sum_over_time count_over_time \
            quantile_over_time stddev_over_time stdvar_over_time last_over_time \
            present_over_time absent_over_time abs ceil floor round clamp clamp_min clamp_max \
            sqrt exp ln log2 log10 sgn label_replace label_join absent scalar vector time \
            timestamp sort sort_desc histogram_quantile";
        for name in spec.split_whitespace() {
            let f = FUNCTIONS.iter().find(|(n, _)| *n == name);
            assert!(matches!(f, Some((_, Some(_)))), "{name} is not implemented");
        }
    }
}
