//! PromQL evaluation over the storage [`Querier`].
//!
//! For now: instant vector selectors with all four matcher types, `offset` and `@`, and
//! number literals, with Prometheus's 5 minute lookback and staleness handling. The full
//! engine (functions, aggregations, operators, range queries) grows here.

use kappie_storage::{is_stale_marker, Labels, MatchOp, Matcher, Querier, StorageError};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prometheus's default lookback delta.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// The value of an expression at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Vector(Vec<InstantSample>),
    Scalar { t: i64, v: f64 },
}

/// Why a query failed, in the categories of Prometheus's API error types.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The query text is not valid PromQL (HTTP 400 `bad_data`).
    #[error("{0}")]
    Parse(String),
    /// The query is valid but cannot be evaluated (HTTP 422 `execution`).
    #[error("{0}")]
    Execution(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// Parses and evaluates `query` at `t` (milliseconds).
pub fn instant_query(q: &dyn Querier, query: &str, t: i64) -> Result<Value, EvalError> {
    let expr = parser::parse(query).map_err(EvalError::Parse)?;
    eval(q, &expr, t)
}

fn eval(q: &dyn Querier, expr: &Expr, t: i64) -> Result<Value, EvalError> {
    match expr {
        Expr::NumberLiteral(n) => Ok(Value::Scalar { t, v: n.val }),
        Expr::Paren(p) => eval(q, &p.expr, t),
        Expr::VectorSelector(vs) => Ok(Value::Vector(select_instant(q, vs, t)?)),
        other => Err(EvalError::Execution(format!(
            "not supported yet by Kappie's PromQL engine: {}",
            other.prettify().lines().next().unwrap_or_default()
        ))),
    }
}

fn to_matchers(ms: &[promql_parser::label::Matcher]) -> Result<Vec<Matcher>, EvalError> {
    ms.iter()
        .map(|m| {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::Regex,
                PMatchOp::NotRe(_) => MatchOp::NotRegex,
            };
            Matcher::new(op, m.name.clone(), m.value.clone())
                .map_err(|e| EvalError::Parse(e.to_string()))
        })
        .collect()
}

fn duration_ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

/// The time an instant selector reads at, after `@` and `offset`.
fn selector_time(vs: &VectorSelector, t: i64) -> Result<i64, EvalError> {
    let base = match &vs.at {
        None => t,
        Some(AtModifier::At(st)) => system_time_ms(st),
        // Without a range query, start() and end() are the evaluation time.
        Some(AtModifier::Start) | Some(AtModifier::End) => t,
    };
    Ok(match &vs.offset {
        None => base,
        Some(Offset::Pos(d)) => base - duration_ms(d),
        Some(Offset::Neg(d)) => base + duration_ms(d),
    })
}

fn system_time_ms(st: &SystemTime) -> i64 {
    match st.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The matcher sets of a selector (one per `or` branch), the metric name included.
fn matcher_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, EvalError> {
    let name = vs
        .name
        .as_ref()
        .map(|n| Matcher::new(MatchOp::Equal, "__name__", n.clone()))
        .transpose()?;
    let branches: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![&vs.matchers.matchers]
    } else {
        vs.matchers.or_matchers.iter().collect()
    };
    branches
        .into_iter()
        .map(|b| {
            let mut ms = to_matchers(b)?;
            ms.extend(name.clone());
            Ok(ms)
        })
        .collect()
}

/// Parses a series selector (the `match[]` of the series and label endpoints).
pub fn series_selector(text: &str) -> Result<Vec<Vec<Matcher>>, EvalError> {
    match parser::parse(text).map_err(EvalError::Parse)? {
        Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => matcher_sets(&vs),
        _ => Err(EvalError::Parse(format!(
            "{text:?} is not a series selector"
        ))),
    }
}

/// Evaluates an instant vector selector: per matching series, the newest sample in
/// `(t - 5m, t]`, unless that sample is a staleness marker.
pub fn select_instant(
    q: &dyn Querier,
    vs: &VectorSelector,
    t: i64,
) -> Result<Vec<InstantSample>, EvalError> {
    let ts = selector_time(vs, t)?;
    let sets = matcher_sets(vs)?;
    let mut out: Vec<InstantSample> = Vec::new();
    for ms in sets {
        for s in q.select(&ms, ts - LOOKBACK_MS + 1, ts)? {
            if let Some(last) = s.samples.last() {
                if !is_stale_marker(last.v) && !out.iter().any(|o| o.labels == s.labels) {
                    out.push(InstantSample {
                        labels: s.labels,
                        t,
                        v: last.v,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}
