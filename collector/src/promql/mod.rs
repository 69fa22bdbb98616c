//! PromQL over the storage [`Querier`], with Prometheus 2.42's semantics.
//!
//! `eval` holds the one evaluator `match`; operators, aggregations and functions live in
//! `binary`, `aggregate` and `functions` (one table, one file per group). Queries are
//! evaluated step by step over selectors loaded once per query; limits (timeout, samples
//! held, series returned) come from [`QueryLimits`].

mod aggregate;
mod binary;
mod eval;
mod functions;
mod value;

pub use value::{InstantSample, SeriesResult, Value};

use eval::Evaluator;
use kappie_storage::{Labels, MatchOp, Matcher, Querier, StorageError};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, VectorSelector};
use std::time::Duration;

/// Prometheus's default lookback delta.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Limits and defaults of query evaluation.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Longest a query may run (Prometheus: `--query.timeout`, default 2m).
    pub timeout: Duration,
    /// Most samples one query may hold in memory (Prometheus: `--query.max-samples`).
    pub max_samples: usize,
    /// Most series a query may return.
    pub max_series: usize,
    /// How far back an instant selector looks for a sample.
    pub lookback_ms: i64,
    /// Step of subqueries that give none (Prometheus's global evaluation interval).
    pub default_subquery_step_ms: i64,
    /// Most tokens a query may have (then 400 `bad_data`). The parser's time grows with the
    /// square of a chain's length (20,000 terms took 2.7 s, 64,000 took 25 s), and the
    /// parser, the evaluator and dropping the tree recurse once per level of nesting, which
    /// this bounds (see [`on_query_stack`]).
    pub max_tokens: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
            max_series: 1_000_000,
            lookback_ms: LOOKBACK_MS,
            default_subquery_step_ms: 60_000,
            max_tokens: 20_000,
        }
    }
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
    /// The query ran past its timeout (HTTP 503 `timeout`).
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// Stack of the thread a query is parsed, evaluated and dropped on. Each level of nesting
/// costs the parser, the evaluator and the tree's drop a few stack frames; with at most
/// `max_tokens` (default 20,000) tokens a tree is at most that deep. The memory is touched
/// only as deep as a query goes.
pub const QUERY_STACK_BYTES: usize = 1 << 30;

/// Threads that evaluate queries when [`set_query_concurrency`] was not called (Prometheus's
/// `--query.max-concurrency` default).
pub const DEFAULT_QUERY_CONCURRENCY: usize = 20;

static QUERY_THREADS: std::sync::OnceLock<Result<rayon::ThreadPool, String>> =
    std::sync::OnceLock::new();

fn query_threads(n: usize) -> &'static Result<rayon::ThreadPool, String> {
    QUERY_THREADS.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .stack_size(QUERY_STACK_BYTES)
            .thread_name(|i| format!("kappie-query-{i}"))
            .build()
            .map_err(|e| e.to_string())
    })
}

/// Sets how many queries are evaluated at once (more wait their turn); takes effect only
/// before the first query. Returns the number in effect.
pub fn set_query_concurrency(n: usize) -> Result<usize, String> {
    match query_threads(n) {
        Ok(p) => Ok(p.current_num_threads()),
        Err(e) => Err(e.clone()),
    }
}

/// Runs `f` on one of the query threads, each with a stack of [`QUERY_STACK_BYTES`], and
/// waits for it. Everything that holds a parsed query runs in here: a query nested
/// thousands deep (`1+1+...+1`) overflowed the 2 MiB stack of a runtime thread and aborted
/// the process. The threads live as long as the process: a thread started per query
/// (before 2026-12-02) cost no more CPU, but on a loaded machine each new thread waited
/// for the scheduler, and queries took up to 3x Prometheus's time where the same work on a
/// thread that already existed took 0.7x (docs/BENCHMARKS.md).
pub fn on_query_stack<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R, EvalError> {
    match query_threads(DEFAULT_QUERY_CONCURRENCY) {
        Ok(p) => Ok(p.install(f)),
        Err(e) => Err(EvalError::Execution(format!(
            "cannot start the query threads: {e}"
        ))),
    }
}

/// Evaluations waiting for a query thread, and running on one (`/metrics`:
/// `kappie_queries`).
pub static QUERIES_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub static QUERIES_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The number of query threads (0 before the first query or [`set_query_concurrency`]).
pub fn query_concurrency() -> usize {
    match QUERY_THREADS.get() {
        Some(Ok(p)) => p.current_num_threads(),
        _ => 0,
    }
}

/// [`on_query_stack`] for an evaluation: the time it waited for a query thread counts
/// against `limits.timeout`, as in Prometheus.
fn run_query<R: Send>(
    limits: &QueryLimits,
    f: impl FnOnce(&QueryLimits) -> Result<R, EvalError> + Send,
) -> Result<R, EvalError> {
    use std::sync::atomic::Ordering::Relaxed;
    let asked = std::time::Instant::now();
    QUERIES_WAITING.fetch_add(1, Relaxed);
    let mut waiting = Some(scopeguard_sub(&QUERIES_WAITING));
    on_query_stack(|| {
        drop(waiting.take());
        QUERIES_RUNNING.fetch_add(1, Relaxed);
        let _running = scopeguard_sub(&QUERIES_RUNNING);
        let waited = asked.elapsed();
        if waited >= limits.timeout {
            return Err(EvalError::Timeout(
                "query timed out in query queue (--query-max-concurrency queries were running)"
                    .into(),
            ));
        }
        let mut left = limits.clone();
        left.timeout -= waited;
        f(&left)
    })?
}

/// Takes one from `n` when dropped (also when the evaluation panics).
fn scopeguard_sub(n: &'static std::sync::atomic::AtomicUsize) -> impl Drop {
    struct Sub(&'static std::sync::atomic::AtomicUsize);
    impl Drop for Sub {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    Sub(n)
}

/// Parses `query` once its token count is within `max_tokens` (see
/// [`QueryLimits::max_tokens`]). Run it on [`on_query_stack`].
pub fn parse(query: &str, max_tokens: usize) -> Result<Expr, EvalError> {
    use lrpar::{Lexeme, Lexer, NonStreamingLexer};
    use parser::token::{T_ADD, T_DURATION, T_LEFT_BRACKET, T_OFFSET, T_RIGHT_BRACKET, T_SUB};
    let lexer = parser::lexer(query).map_err(EvalError::Parse)?;
    let mut tokens = 0;
    // promql-parser 0.11 takes a duration wherever a number may stand (`foo @ 10m`,
    // `1 + 5m`); Prometheus 2.42 accepts one only in brackets (a range or a subquery) and
    // after `offset`, and refuses the rest as a parse error.
    let (mut brackets, mut prev, mut before_prev) = (0usize, None, None);
    for lexeme in lexer.iter() {
        let Ok(lexeme) = lexeme else { continue };
        tokens += 1;
        let id = lexeme.tok_id();
        match id {
            T_LEFT_BRACKET => brackets += 1,
            T_RIGHT_BRACKET => brackets = brackets.saturating_sub(1),
            T_DURATION => {
                let after_offset = prev == Some(T_OFFSET)
                    || (matches!(prev, Some(T_ADD | T_SUB)) && before_prev == Some(T_OFFSET));
                if brackets == 0 && !after_offset {
                    return Err(EvalError::Parse(format!(
                        "unexpected duration {:?}: a duration stands only in a range \
                         (`[5m]`), a subquery (`[1h:1m]`) or after `offset`; a timestamp \
                         or a number is written in seconds",
                        lexer.span_str(lexeme.span())
                    )));
                }
            }
            _ => {}
        }
        (before_prev, prev) = (prev, Some(id));
    }
    if tokens > max_tokens {
        return Err(EvalError::Parse(format!(
            "the query has {tokens} tokens, more than the limit of {max_tokens} \
             (--query-max-tokens); split it into smaller queries or raise the limit"
        )));
    }
    // promql-parser 0.11 panics on some text it should refuse: a duration too large for
    // `Duration::from_secs_f64` (`x[1e400]`, found by the fuzz target promql). Such a query
    // is invalid (400), not a failed worker (500).
    std::panic::catch_unwind(|| parser::parse(query))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the query cannot be parsed: {why}"))
        })
        .map_err(EvalError::Parse)
}

/// Parses and evaluates `query` at `t` (milliseconds), on a query thread
/// ([`on_query_stack`]).
pub fn instant_query(
    q: &(dyn Querier + Sync),
    query: &str,
    t: i64,
    limits: &QueryLimits,
) -> Result<Value, EvalError> {
    run_query(limits, |l| instant_query_here(q, query, t, l))
}

fn instant_query_here(
    q: &dyn Querier,
    query: &str,
    t: i64,
    limits: &QueryLimits,
) -> Result<Value, EvalError> {
    let expr = parse(query, limits.max_tokens)?;
    let mut ev = Evaluator::new(q, t, t, limits.clone());
    ev.plan(&expr, t, t);
    let value = match ev.eval(&expr, t)? {
        value::StepValue::Scalar(v) => Value::Scalar { t, v },
        value::StepValue::String(v) => Value::String { t, v },
        value::StepValue::Vector(v) => {
            eval::check_unique(&v)?;
            Value::Vector(
                v.into_iter()
                    .map(|s| InstantSample {
                        labels: (*s.labels).clone(),
                        t,
                        v: s.v,
                    })
                    .collect(),
            )
        }
        value::StepValue::Matrix(m) => Value::Matrix(
            m.into_iter()
                .map(|s| SeriesResult {
                    labels: (*s.labels).clone(),
                    points: s.points.to_vec(),
                })
                .collect(),
        ),
    };
    check_series(&value, limits)?;
    Ok(value)
}

/// Parses and evaluates `query` at every step of `[start, end]` (milliseconds), on a
/// query thread ([`on_query_stack`]).
pub fn range_query(
    q: &(dyn Querier + Sync),
    query: &str,
    start: i64,
    end: i64,
    step: i64,
    limits: &QueryLimits,
) -> Result<Value, EvalError> {
    run_query(limits, |l| range_query_here(q, query, start, end, step, l))
}

fn range_query_here(
    q: &dyn Querier,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
    limits: &QueryLimits,
) -> Result<Value, EvalError> {
    let expr = parse(query, limits.max_tokens)?;
    match expr.value_type() {
        ValueType::Scalar | ValueType::Vector => {}
        other => {
            return Err(EvalError::Parse(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                match other {
                    ValueType::Matrix => "range vector",
                    ValueType::String => "string",
                    _ => "unknown",
                }
            )))
        }
    }
    if step <= 0 {
        return Err(EvalError::Parse(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    let mut ev = Evaluator::new(q, start, end, limits.clone());
    ev.set_steps(start, end, step);
    ev.plan(&expr, start, end);
    let value = Value::Matrix(ev.range(&expr, start, end, step)?);
    check_series(&value, limits)?;
    Ok(value)
}

fn check_series(v: &Value, limits: &QueryLimits) -> Result<(), EvalError> {
    let n = match v {
        Value::Vector(x) => x.len(),
        Value::Matrix(x) => x.len(),
        _ => 0,
    };
    if n > limits.max_series {
        return Err(EvalError::Execution(format!(
            "query returned {n} series, more than the limit of {} (max_query_series); narrow the selectors or raise the limit",
            limits.max_series
        )));
    }
    Ok(())
}

/// The `φ`-quantile of `values` with linear interpolation between closest ranks, as
/// Prometheus's `quantile` (NaN sorts first; `φ` outside [0, 1] gives ∓Inf).
pub(crate) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Sample values as Prometheus writes them: shortest round-trip decimal, `NaN`, `+Inf`,
/// `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A label set as Prometheus prints one in messages: `{a="1", b="2"}`.
pub(crate) fn display_labels(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
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

/// The matcher sets of a selector (one per `or` branch), the metric name included.
pub(crate) fn matcher_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, EvalError> {
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

/// Parses a series selector (the `match[]` of the series and label endpoints), on a query
/// thread ([`on_query_stack`]): the text may be any query.
pub fn series_selector(text: &str, max_tokens: usize) -> Result<Vec<Vec<Matcher>>, EvalError> {
    on_query_stack(|| match parse(text, max_tokens)? {
        Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => matcher_sets(&vs),
        _ => Err(EvalError::Parse(format!(
            "{text:?} is not a series selector"
        ))),
    })?
}
