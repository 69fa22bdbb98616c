//! Values flowing through the evaluator at one evaluation step, and the results a query
//! returns.

use kappie_storage::Labels;
use std::ops::Deref;
use std::sync::Arc;

/// One element of an instant vector.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: Arc<Labels>,
    pub v: f64,
    /// The stored sample's own time when this element comes straight from a vector selector
    /// (what `timestamp()` reports); the evaluation time otherwise.
    pub t: i64,
}

/// A shared, immutable run of `(time ms, value)` points; range vectors are windows into
/// the points loaded once per selector, so a step costs no copying.
#[derive(Debug, Clone)]
pub struct Points {
    buf: Arc<Vec<(i64, f64)>>,
    lo: usize,
    hi: usize,
}

impl Points {
    pub fn new(buf: Arc<Vec<(i64, f64)>>) -> Self {
        let hi = buf.len();
        Points { buf, lo: 0, hi }
    }

    /// The points with `mint <= t <= maxt` (both ends inclusive, as in Prometheus 2.x).
    /// `hint` holds the bounds of the previous window of these points and is updated:
    /// steps move forward, so the new bounds are usually a few points further on.
    pub fn window(&self, mint: i64, maxt: i64, hint: &mut (usize, usize)) -> Points {
        self.window_slice(mint, maxt, hint);
        Points {
            buf: self.buf.clone(),
            lo: self.lo + hint.0,
            hi: self.lo + hint.1,
        }
    }

    /// [`Points::window`] as a borrowed slice.
    pub fn window_slice(&self, mint: i64, maxt: i64, hint: &mut (usize, usize)) -> &[(i64, f64)] {
        let s = &self.buf[self.lo..self.hi];
        let lo = seek(s, hint.0, |t| t < mint);
        let hi = seek(s, hint.1, |t| t <= maxt).max(lo);
        *hint = (lo, hi);
        &s[lo..hi]
    }

    /// The number of points at or before `t`, found from `hint` like [`Points::window`].
    pub fn count_until(&self, t: i64, hint: &mut usize) -> usize {
        *hint = seek(&self.buf[self.lo..self.hi], *hint, |x| x <= t);
        *hint
    }
}

/// The partition point of `s` under `before` (true for a prefix of `s`), searched forward
/// from `hint` for a few points, by bisection otherwise.
fn seek(s: &[(i64, f64)], hint: usize, before: impl Fn(i64) -> bool) -> usize {
    const SCAN: usize = 8;
    if hint <= s.len() && (hint == 0 || before(s[hint - 1].0)) {
        let mut i = hint;
        while i < s.len() && i < hint + SCAN {
            if !before(s[i].0) {
                return i;
            }
            i += 1;
        }
        if i == s.len() {
            return i;
        }
        return i + s[i..].partition_point(|p| before(p.0));
    }
    s.partition_point(|p| before(p.0))
}

impl Deref for Points {
    type Target = [(i64, f64)];
    fn deref(&self) -> &[(i64, f64)] {
        &self.buf[self.lo..self.hi]
    }
}

/// One series of a range vector.
#[derive(Debug, Clone)]
pub struct RangeSeries {
    pub labels: Arc<Labels>,
    pub points: Points,
}

/// The value of an expression at one evaluation step.
#[derive(Debug, Clone)]
pub enum StepValue {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<RangeSeries>),
}

impl StepValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepValue::Scalar(_) => "scalar",
            StepValue::String(_) => "string",
            StepValue::Vector(_) => "instant vector",
            StepValue::Matrix(_) => "range vector",
        }
    }
}

/// One series of a query result with its points.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesResult {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// One element of an instant query's vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// What a query returns, in the result types of Prometheus's API.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, v: String },
    Vector(Vec<InstantSample>),
    Matrix(Vec<SeriesResult>),
}
