//! The evaluator: one `match` over the parsed expression, evaluated one step at a time.
//!
//! Before evaluation, a planning walk works out for every selector and subquery which time
//! range it will read across all steps (with `offset`, `@` and enclosing subqueries taken
//! into account). Each selector then loads its series once, and every step reads windows
//! of those points, as Prometheus's engine does. Subqueries evaluate their inner
//! expression once at every aligned inner step of their planned range.

use super::functions::{unwrap_paren, MatrixArg};
use super::value::{Points, RangeSeries, Sample, SeriesResult, StepValue};
use super::{aggregate, binary, functions, matcher_sets, EvalError, QueryLimits};
use kappie_storage::{is_stale_marker, Labels, Querier};
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};
use regex::Regex;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type PointVec = Vec<(i64, f64)>;

/// One loaded series of a selector or subquery.
struct Loaded {
    labels: Arc<Labels>,
    points: Points,
}

pub(crate) struct Evaluator<'a> {
    q: &'a dyn Querier,
    /// The query's start and end (what `@ start()` and `@ end()` mean).
    start: i64,
    end: i64,
    /// Step of subqueries that do not give one (Prometheus's global evaluation interval).
    default_step: i64,
    lookback: i64,
    limits: QueryLimits,
    deadline: Instant,
    /// Samples held for this query so far (loaded points, subquery and range results).
    samples: usize,
    /// Per selector or subquery node (keyed by address): the time range it reads.
    plan: HashMap<usize, (i64, i64)>,
    loaded: HashMap<usize, Arc<Vec<Loaded>>>,
    regexes: HashMap<String, Regex>,
    /// Per selector or subquery: where each series' previous window was.
    hints: FxHashMap<usize, Vec<(usize, usize)>>,
    /// Label sets derived from another (by address, the source kept alive so the address
    /// cannot be reused) for one purpose: steps reuse them instead of rebuilding.
    derived: FxHashMap<(usize, usize), (Arc<Labels>, Arc<Labels>)>,
    /// One shared copy of every derived label set, so equal sets have equal addresses.
    interned: FxHashMap<Labels, Arc<Labels>>,
    /// The steps of a range query, `(start, step, count)`; `None` for an instant query.
    grid: Option<(i64, i64, usize)>,
    /// How many subqueries enclose the node the planning walk is at.
    plan_depth: usize,
    /// Calls (by the address of their arguments) evaluated at the range query's steps
    /// only, not inside a subquery: their one-argument range functions are computed series
    /// at a time across all steps ([`Evaluator::range_column`]).
    gridded: HashSet<usize>,
    /// Per gridded call: per series (in the range argument's order) its labels without the
    /// name and its value at every step (`None`: no sample in the window, or none from the
    /// function).
    columns: FxHashMap<usize, Arc<Vec<Column>>>,
}

/// A range function applied to one series' window (see `functions::map_range`).
pub(crate) type RangeFn<'f> = dyn Fn(&MatrixArg, &[(i64, f64)]) -> Option<f64> + 'f;

struct Column {
    labels: Arc<Labels>,
    values: Vec<Option<f64>>,
}

/// What a derived label set is for: dropping the metric name, or a grouping or matching
/// key of one expression node (by its address).
pub(crate) const DROP_NAME: usize = 0;

pub(crate) fn ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
    }
}

fn system_time_ms(st: &SystemTime) -> i64 {
    match st.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn key<T>(node: &T) -> usize {
    node as *const T as usize
}

/// The first multiple of `step` at or after `t`.
fn align_up(t: i64, step: i64) -> i64 {
    let a = t.div_euclid(step) * step;
    if a < t {
        a + step
    } else {
        a
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(q: &'a dyn Querier, start: i64, end: i64, limits: QueryLimits) -> Self {
        Evaluator {
            q,
            start,
            end,
            default_step: limits.default_subquery_step_ms,
            lookback: limits.lookback_ms,
            deadline: Instant::now() + limits.timeout,
            limits,
            samples: 0,
            plan: HashMap::new(),
            loaded: HashMap::new(),
            regexes: HashMap::new(),
            hints: FxHashMap::default(),
            derived: FxHashMap::default(),
            interned: FxHashMap::default(),
            grid: None,
            plan_depth: 0,
            gridded: HashSet::new(),
            columns: FxHashMap::default(),
        }
    }

    /// Makes this a range query's evaluator, with steps `start, start + step, … <= end`;
    /// call before [`Evaluator::plan`].
    pub fn set_steps(&mut self, start: i64, end: i64, step: i64) {
        // Beyond the API's 11,000 points a series, steps are evaluated one by one.
        if step > 0 && end >= start && (end - start) / step < 11_000 {
            self.grid = Some((start, step, ((end - start) / step) as usize + 1));
        }
    }

    /// Fails once the query has run past its timeout.
    pub fn check_deadline(&self) -> Result<(), EvalError> {
        if Instant::now() > self.deadline {
            return Err(EvalError::Timeout(
                "query timed out in expression evaluation".into(),
            ));
        }
        Ok(())
    }

    /// Counts `n` more samples held by this query against the limit.
    pub fn hold_samples(&mut self, n: usize) -> Result<(), EvalError> {
        self.samples += n;
        if self.samples > self.limits.max_samples {
            return Err(EvalError::Execution(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `f(l)`, computed once per query for each `(purpose, l)` and interned: equal results
    /// share one allocation, so callers may group by address.
    pub fn derive(
        &mut self,
        purpose: usize,
        l: &Arc<Labels>,
        f: impl FnOnce(&Labels) -> Labels,
    ) -> Arc<Labels> {
        let k = (purpose, Arc::as_ptr(l) as usize);
        if let Some((_, v)) = self.derived.get(&k) {
            return v.clone();
        }
        let v = self.intern(f(l));
        self.derived.insert(k, (l.clone(), v.clone()));
        v
    }

    /// The query's one shared copy of `l`.
    pub fn intern(&mut self, l: Labels) -> Arc<Labels> {
        match self.interned.get(&l) {
            Some(v) => v.clone(),
            None => {
                let v = Arc::new(l.clone());
                self.interned.insert(l, v.clone());
                v
            }
        }
    }

    /// `l` without `__name__`, shared across steps.
    pub fn without_name(&mut self, l: &Arc<Labels>) -> Arc<Labels> {
        self.derive(DROP_NAME, l, Labels::without_name)
    }

    /// A compiled, fully anchored regular expression, cached for the query.
    pub fn regex(&mut self, pattern: &str) -> Result<Regex, regex::Error> {
        if let Some(r) = self.regexes.get(pattern) {
            return Ok(r.clone());
        }
        let r = Regex::new(&format!("^(?s:{pattern})$"))?;
        self.regexes.insert(pattern.to_owned(), r.clone());
        Ok(r)
    }

    fn at_time(&self, at: &AtModifier) -> i64 {
        match at {
            AtModifier::Start => self.start,
            AtModifier::End => self.end,
            AtModifier::At(st) => system_time_ms(st),
        }
    }

    /// The time a selector or subquery reads at for evaluation time `ts`.
    pub fn ref_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, ts: i64) -> i64 {
        at.as_ref().map_or(ts, |a| self.at_time(a)) - offset_ms(offset)
    }

    fn widen(&mut self, k: usize, mint: i64, maxt: i64) {
        let e = self.plan.entry(k).or_insert((mint, maxt));
        e.0 = e.0.min(mint);
        e.1 = e.1.max(maxt);
    }

    /// Records which time range every selector and subquery under `e` reads when `e` is
    /// evaluated at times in `[tmin, tmax]`.
    pub fn plan(&mut self, e: &Expr, tmin: i64, tmax: i64) {
        let refs = |ev: &Self, at: &Option<AtModifier>, off: &Option<Offset>| {
            (ev.ref_time(at, off, tmin), ev.ref_time(at, off, tmax))
        };
        match e {
            Expr::VectorSelector(vs) => {
                let (a, b) = refs(self, &vs.at, &vs.offset);
                self.widen(key(vs), a - self.lookback, b);
            }
            Expr::MatrixSelector(m) => {
                let (a, b) = refs(self, &m.vs.at, &m.vs.offset);
                self.widen(key(&m.vs), a - ms(&m.range), b);
            }
            Expr::Subquery(sq) => {
                let (a, b) = refs(self, &sq.at, &sq.offset);
                let (a, b) = (a - ms(&sq.range), b);
                self.widen(key(sq), a, b);
                let step = self.subquery_step(sq);
                if step > 0 {
                    self.plan_depth += 1;
                    self.plan(&sq.expr, align_up(a, step), b);
                    self.plan_depth -= 1;
                }
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.plan(p, tmin, tmax);
                }
                self.plan(&a.expr, tmin, tmax);
            }
            Expr::Unary(u) => self.plan(&u.expr, tmin, tmax),
            Expr::Paren(p) => self.plan(&p.expr, tmin, tmax),
            Expr::Binary(b) => {
                self.plan(&b.lhs, tmin, tmax);
                self.plan(&b.rhs, tmin, tmax);
            }
            Expr::Call(c) => {
                if self.plan_depth == 0 && self.grid.is_some() {
                    self.gridded.insert(c.args.args.as_ptr() as usize);
                }
                for a in &c.args.args {
                    self.plan(a, tmin, tmax);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    fn subquery_step(&self, sq: &SubqueryExpr) -> i64 {
        sq.step.as_ref().map_or(self.default_step, ms)
    }

    /// The value of `e` at evaluation time `ts`.
    pub fn eval(&mut self, e: &Expr, ts: i64) -> Result<StepValue, EvalError> {
        match e {
            Expr::NumberLiteral(n) => Ok(StepValue::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(StepValue::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => match self.eval(&u.expr, ts)? {
                StepValue::Scalar(v) => Ok(StepValue::Scalar(-v)),
                StepValue::Vector(v) => Ok(StepValue::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: self.without_name(&s.labels),
                            v: -s.v,
                            t: ts,
                        })
                        .collect(),
                )),
                other => Err(EvalError::Execution(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got {}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(StepValue::Vector(self.vector_at(vs, ts)?)),
            Expr::MatrixSelector(m) => {
                let reft = self.ref_time(&m.vs.at, &m.vs.offset, ts);
                let data = self.load(key(&m.vs), &m.vs, true)?;
                Ok(StepValue::Matrix(self.window(
                    key(&m.vs),
                    &data,
                    reft - ms(&m.range),
                    reft,
                )))
            }
            Expr::Subquery(sq) => Ok(StepValue::Matrix(self.subquery_at(sq, ts)?)),
            Expr::Aggregate(a) => aggregate::eval(self, a, ts),
            Expr::Binary(b) => binary::eval(self, b, ts),
            Expr::Call(c) => functions::call(self, c, ts),
            Expr::Extension(_) => Err(EvalError::Execution(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// The windows `[mint, maxt]` of the loaded series of node `k`, leaving out series
    /// with no point there.
    fn window(&mut self, k: usize, data: &[Loaded], mint: i64, maxt: i64) -> Vec<RangeSeries> {
        let hints = self
            .hints
            .entry(k)
            .or_insert_with(|| vec![(0, 0); data.len()]);
        data.iter()
            .zip(hints.iter_mut())
            .filter_map(|(s, hint)| {
                let points = s.points.window(mint, maxt, hint);
                (!points.is_empty()).then(|| RangeSeries {
                    labels: s.labels.clone(),
                    points,
                })
            })
            .collect()
    }

    /// `f` of the one range argument of a gridded call (see [`Evaluator::gridded`]) at step
    /// `ts`, each series' windows taken and `f` applied for all steps at the first call,
    /// which saves every later step the windows, the label lookups and the allocations of
    /// the step-by-step path. The values, their order and their labels are those the
    /// step-by-step path gives (`map_range`); `None` when the call is not gridded, has other
    /// arguments, or `ts` is not a step.
    pub fn range_column(
        &mut self,
        args: &[Box<Expr>],
        ts: i64,
        f: &RangeFn<'_>,
    ) -> Result<Option<Vec<Sample>>, EvalError> {
        let Some((start, step, count)) = self.grid else {
            return Ok(None);
        };
        let k = args.as_ptr() as usize;
        if args.len() != 1 || ts < start || (ts - start) % step != 0 || !self.gridded.contains(&k) {
            return Ok(None);
        }
        let i = ((ts - start) / step) as usize;
        if i >= count {
            return Ok(None);
        }
        let columns = match self.columns.get(&k) {
            Some(c) => c.clone(),
            None => {
                let (data, range, at, offset) = match unwrap_paren(&args[0]) {
                    Expr::MatrixSelector(m) => (
                        self.load(key(&m.vs), &m.vs, true)?,
                        ms(&m.range),
                        &m.vs.at,
                        &m.vs.offset,
                    ),
                    Expr::Subquery(sq) => {
                        let sk = key(sq);
                        let d = match self.loaded.get(&sk) {
                            Some(d) => d.clone(),
                            None => {
                                let d = Arc::new(self.run_subquery(sq)?);
                                self.loaded.insert(sk, d.clone());
                                d
                            }
                        };
                        (d, ms(&sq.range), &sq.at, &sq.offset)
                    }
                    _ => return Ok(None),
                };
                self.check_deadline()?;
                let ends: Vec<i64> = (0..count)
                    .map(|j| self.ref_time(at, offset, start + j as i64 * step))
                    .collect();
                let mut columns = Vec::with_capacity(data.len());
                for (j, s) in data.iter().enumerate() {
                    if j % 256 == 255 {
                        self.check_deadline()?;
                    }
                    let mut hint = (0, 0);
                    let values = ends
                        .iter()
                        .map(|&end| {
                            let p = s.points.window_slice(end - range, end, &mut hint);
                            if p.is_empty() {
                                return None;
                            }
                            let m = MatrixArg {
                                series: Vec::new(),
                                range,
                                end,
                            };
                            f(&m, p)
                        })
                        .collect();
                    columns.push(Column {
                        labels: self.without_name(&s.labels),
                        values,
                    });
                }
                let columns = Arc::new(columns);
                self.columns.insert(k, columns.clone());
                columns
            }
        };
        Ok(Some(
            columns
                .iter()
                .filter_map(|c| {
                    c.values[i].map(|v| Sample {
                        labels: c.labels.clone(),
                        v,
                        t: ts,
                    })
                })
                .collect(),
        ))
    }

    /// An instant vector selector: per series, the newest sample in
    /// `[ref - lookback, ref]`, unless it is a staleness marker.
    fn vector_at(&mut self, vs: &VectorSelector, ts: i64) -> Result<Vec<Sample>, EvalError> {
        let reft = self.ref_time(&vs.at, &vs.offset, ts);
        let data = self.load(key(vs), vs, false)?;
        let mut out = Vec::with_capacity(data.len());
        let hints = self
            .hints
            .entry(key(vs))
            .or_insert_with(|| vec![(0, 0); data.len()]);
        for (s, hint) in data.iter().zip(hints.iter_mut()) {
            let i = s.points.count_until(reft, &mut hint.0);
            if i == 0 {
                continue;
            }
            let (t, v) = s.points[i - 1];
            if t < reft - self.lookback || is_stale_marker(v) {
                continue;
            }
            out.push(Sample {
                labels: s.labels.clone(),
                v,
                t,
            });
        }
        Ok(out)
    }

    /// Loads (once per query) the series of a selector over its planned range. Range
    /// selectors never see staleness markers; instant selectors need them.
    fn load(
        &mut self,
        k: usize,
        vs: &VectorSelector,
        drop_stale: bool,
    ) -> Result<Arc<Vec<Loaded>>, EvalError> {
        if let Some(d) = self.loaded.get(&k) {
            return Ok(d.clone());
        }
        self.check_deadline()?;
        let (mint, maxt) = *self
            .plan
            .get(&k)
            .ok_or_else(|| EvalError::Execution("selector was not planned".into()))?;
        let sets = matcher_sets(vs)?;
        // Only `or` branches of one selector can select a series twice.
        let mut seen = (sets.len() > 1).then(HashSet::new);
        let mut out = Vec::new();
        let mut total = 0;
        for ms in sets {
            for s in self.q.select(&ms, mint, maxt)? {
                if let Some(seen) = seen.as_mut() {
                    if !seen.insert(s.labels.clone()) {
                        continue;
                    }
                }
                let pts: Vec<(i64, f64)> = s
                    .samples
                    .iter()
                    .filter(|x| !(drop_stale && is_stale_marker(x.v)))
                    .map(|x| (x.t, x.v))
                    .collect();
                total += pts.len();
                out.push(Loaded {
                    labels: Arc::new(s.labels),
                    points: Points::new(Arc::new(pts)),
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        self.hold_samples(total)?;
        let out = Arc::new(out);
        self.loaded.insert(k, out.clone());
        Ok(out)
    }

    /// A subquery at `ts`: the inner expression's values at the aligned inner steps in
    /// `[ref - range, ref]`.
    fn subquery_at(&mut self, sq: &SubqueryExpr, ts: i64) -> Result<Vec<RangeSeries>, EvalError> {
        let k = key(sq);
        let data = match self.loaded.get(&k) {
            Some(d) => d.clone(),
            None => {
                let d = Arc::new(self.run_subquery(sq)?);
                self.loaded.insert(k, d.clone());
                d
            }
        };
        let reft = self.ref_time(&sq.at, &sq.offset, ts);
        Ok(self.window(k, &data, reft - ms(&sq.range), reft))
    }

    fn run_subquery(&mut self, sq: &SubqueryExpr) -> Result<Vec<Loaded>, EvalError> {
        let step = self.subquery_step(sq);
        if step <= 0 {
            return Err(EvalError::Execution(
                "subquery step must be positive".into(),
            ));
        }
        let (a, b) = *self
            .plan
            .get(&key(sq))
            .ok_or_else(|| EvalError::Execution("subquery was not planned".into()))?;
        let mut index: FxHashMap<Arc<Labels>, usize> = FxHashMap::default();
        let mut series: Vec<(Arc<Labels>, PointVec)> = Vec::new();
        let mut t = align_up(a, step);
        while t <= b {
            self.check_deadline()?;
            match self.eval(&sq.expr, t)? {
                StepValue::Vector(v) => {
                    self.hold_samples(v.len())?;
                    for s in v {
                        let i = *index.entry(s.labels.clone()).or_insert_with(|| {
                            series.push((s.labels.clone(), Vec::new()));
                            series.len() - 1
                        });
                        series[i].1.push((t, s.v));
                    }
                }
                other => {
                    return Err(EvalError::Execution(format!(
                        "subquery is only allowed on instant vector, got {}",
                        other.type_name()
                    )))
                }
            }
            t += step;
        }
        series.sort_by(|x, y| x.0.cmp(&y.0));
        Ok(series
            .into_iter()
            .map(|(labels, pts)| Loaded {
                labels,
                points: Points::new(Arc::new(pts)),
            })
            .collect())
    }

    /// Evaluates `e` at every step of `[start, end]` and gathers the series.
    pub fn range(
        &mut self,
        e: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<SeriesResult>, EvalError> {
        let mut index: FxHashMap<Arc<Labels>, usize> = FxHashMap::default();
        let mut out: Vec<SeriesResult> = Vec::new();
        let mut ts = start;
        while ts <= end {
            self.check_deadline()?;
            let v = match self.eval(e, ts)? {
                StepValue::Scalar(v) => vec![Sample {
                    labels: Arc::new(Labels::default()),
                    v,
                    t: ts,
                }],
                StepValue::Vector(v) => v,
                other => {
                    return Err(EvalError::Execution(format!(
                        "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                        other.type_name()
                    )))
                }
            };
            check_unique(&v)?;
            self.hold_samples(v.len())?;
            for s in v {
                let i = *index.entry(s.labels.clone()).or_insert_with(|| {
                    out.push(SeriesResult {
                        labels: (*s.labels).clone(),
                        points: Vec::new(),
                    });
                    out.len() - 1
                });
                out[i].points.push((ts, s.v));
            }
            ts += step;
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }
}

/// Prometheus refuses a result vector in which two elements share a label set.
pub(crate) fn check_unique(v: &[Sample]) -> Result<(), EvalError> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen = FxHashSet::default();
    seen.reserve(v.len());
    for s in v {
        if !seen.insert(&*s.labels) {
            return Err(EvalError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}
