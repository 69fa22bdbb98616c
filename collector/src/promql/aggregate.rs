//! Aggregation operators with `by` and `without`, following Prometheus 2.42's arithmetic
//! (plain summation, incremental mean, Welford variance) and its NaN rules.

use super::eval::Evaluator;
use super::value::{Sample, StepValue};
use super::{format_value, quantile, EvalError};
use kappie_storage::{valid_label_name, Labels};
use promql_parser::parser::token::*;
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};
use rustc_hash::FxHashMap;
use std::sync::Arc;

pub(crate) fn eval(ev: &mut Evaluator, a: &AggregateExpr, ts: i64) -> Result<StepValue, EvalError> {
    let op = a.op.id();
    let param = match &a.param {
        Some(p) => Some(ev.eval(p, ts)?),
        None => None,
    };
    let input = match ev.eval(&a.expr, ts)? {
        StepValue::Vector(v) => v,
        other => {
            return Err(EvalError::Execution(format!(
                "aggregation {} expects an instant vector, got {}",
                a.op,
                other.type_name()
            )))
        }
    };
    let (by, mut grouping): (bool, Vec<String>) = match &a.modifier {
        None => (true, Vec::new()),
        Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
    };
    let scalar_param = || match &param {
        Some(StepValue::Scalar(v)) => Ok(*v),
        _ => Err(EvalError::Execution(format!(
            "{} expects a scalar parameter",
            a.op
        ))),
    };
    let mut value_label = None;
    match op {
        T_COUNT_VALUES => {
            let name = match (&param, a.param.as_deref()) {
                (Some(StepValue::String(s)), _) => s.clone(),
                (_, Some(Expr::StringLiteral(s))) => s.val.clone(),
                _ => {
                    return Err(EvalError::Execution(
                        "count_values expects a string parameter".into(),
                    ))
                }
            };
            if !valid_label_name(&name) {
                return Err(EvalError::Execution(format!("invalid label name {name:?}")));
            }
            if by {
                grouping.push(name.clone());
            }
            value_label = Some(name);
        }
        T_TOPK | T_BOTTOMK => {
            let k = scalar_param()?;
            if !(k.is_finite() && k.abs() < 9.2e18) {
                return Err(EvalError::Execution(format!(
                    "Scalar value {} overflows int64",
                    format_value(k)
                )));
            }
            let node = a as *const AggregateExpr as usize;
            let keys: Vec<usize> = input
                .iter()
                .map(|s| {
                    Arc::as_ptr(&ev.derive(node, &s.labels, |l| group_key(l, by, &grouping)))
                        as usize
                })
                .collect();
            return Ok(StepValue::Vector(top_bottom(
                input,
                &keys,
                k as i64,
                op == T_TOPK,
            )));
        }
        T_LIMITK | T_LIMIT_RATIO => {
            return Err(EvalError::Execution(format!(
                "aggregation {} is not supported (it is newer than Prometheus 2.42)",
                a.op
            )))
        }
        _ => {}
    }
    if !matches!(
        op,
        T_SUM
            | T_AVG
            | T_COUNT
            | T_COUNT_VALUES
            | T_GROUP
            | T_MIN
            | T_MAX
            | T_STDDEV
            | T_STDVAR
            | T_QUANTILE
    ) {
        return Err(EvalError::Execution(format!(
            "aggregation {} is not supported",
            a.op
        )));
    }
    let q = if op == T_QUANTILE {
        Some(scalar_param()?)
    } else {
        None
    };

    let node = a as *const AggregateExpr as usize;
    let mut index: FxHashMap<usize, usize> = FxHashMap::default();
    let mut groups: Vec<(Arc<Labels>, Vec<f64>)> = Vec::new();
    for s in &input {
        // Group keys are interned, so a group is found by the key's address.
        let k = match &value_label {
            Some(n) => ev.intern(group_key(
                &s.labels.with(n, &format_value(s.v)),
                by,
                &grouping,
            )),
            None => ev.derive(node, &s.labels, |l| group_key(l, by, &grouping)),
        };
        let i = *index.entry(Arc::as_ptr(&k) as usize).or_insert_with(|| {
            groups.push((k.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(s.v);
    }
    let out = groups
        .into_iter()
        .map(|(labels, vals)| {
            let v = match op {
                T_SUM => vals.iter().sum(),
                T_AVG => mean(&vals),
                T_COUNT | T_COUNT_VALUES => vals.len() as f64,
                T_GROUP => 1.0,
                T_MIN => vals[1..]
                    .iter()
                    .fold(vals[0], |m, &x| if m > x || m.is_nan() { x } else { m }),
                T_MAX => vals[1..]
                    .iter()
                    .fold(vals[0], |m, &x| if m < x || m.is_nan() { x } else { m }),
                T_STDDEV => variance(&vals).sqrt(),
                T_STDVAR => variance(&vals),
                T_QUANTILE => quantile(q.unwrap_or(f64::NAN), vals),
                _ => f64::NAN,
            };
            Sample { labels, v, t: ts }
        })
        .collect::<Vec<_>>();
    Ok(StepValue::Vector(out))
}

fn group_key(l: &Labels, by: bool, grouping: &[String]) -> Labels {
    if by {
        l.filter(|n| grouping.iter().any(|g| g == n))
    } else {
        l.filter(|n| n != "__name__" && !grouping.iter().any(|g| g == n))
    }
}

/// Prometheus's incremental mean, which keeps an infinite mean instead of turning it
/// into NaN.
pub(crate) fn mean(vals: &[f64]) -> f64 {
    let mut mean = 0.0;
    for (i, &v) in vals.iter().enumerate() {
        let n = (i + 1) as f64;
        if i == 0 {
            mean = v;
            continue;
        }
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / n - mean / n;
    }
    mean
}

/// Population variance by Welford's method.
fn variance(vals: &[f64]) -> f64 {
    let (mut mean, mut m2) = (0.0, 0.0);
    for (i, &v) in vals.iter().enumerate() {
        let delta = v - mean;
        mean += delta / (i + 1) as f64;
        m2 += delta * (v - mean);
    }
    m2 / vals.len() as f64
}

/// `topk`/`bottomk`: per group the k largest (smallest) elements with their own labels,
/// chosen exactly as Prometheus 2.42 chooses them, ties included: each group is a binary
/// heap of at most k samples fed in input order (the group's first sample placed directly,
/// later ones pushed while the heap is short, or replacing the heap's root when strictly
/// better or when the root is NaN: pop, then push), moved as Go's `container/heap` moves
/// them with Prometheus's `vectorByValueHeap` (`vectorByReverseValueHeap`) order, in which
/// NaN is less than everything. Which of several equal samples survives depends on those
/// moves, so they are reproduced step by step. The output is sorted best first, NaN last.
/// `keys[i]` identifies the group of `input[i]`.
fn top_bottom(input: Vec<Sample>, keys: &[usize], k: i64, top: bool) -> Vec<Sample> {
    if k < 1 {
        return Vec::new();
    }
    // The heap's order: `less(a, b)` puts `a` nearer the root.
    let less = |a: f64, b: f64| a.is_nan() || if top { a < b } else { a > b };
    let mut index: FxHashMap<usize, usize> = FxHashMap::default();
    let mut groups: Vec<Vec<Sample>> = Vec::new();
    for (s, key) in input.into_iter().zip(keys) {
        let i = *index.entry(*key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        let h = &mut groups[i];
        if h.is_empty() {
            h.push(s);
            continue;
        }
        let root = h[0].v;
        let better = if top { root < s.v } else { root > s.v };
        if (h.len() as i64) < k || better || root.is_nan() {
            if h.len() as i64 == k {
                if k == 1 {
                    h[0] = s;
                    continue;
                }
                go_heap::pop(h, &less);
            }
            go_heap::push(h, s, &less);
        }
    }
    let mut out = Vec::new();
    for mut g in groups {
        // sort.Reverse of the heap order: best first, NaN last.
        g.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ if top => b.v.partial_cmp(&a.v).unwrap_or(std::cmp::Ordering::Equal),
            _ => a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal),
        });
        out.extend(g);
    }
    out
}

/// The moves of Go's `container/heap` (push: append and sift up; pop: swap the root with
/// the last element, sift down, remove the last), which decide which of equal samples a
/// Prometheus heap keeps.
mod go_heap {
    use super::Sample;

    pub(super) fn push(h: &mut Vec<Sample>, s: Sample, less: &impl Fn(f64, f64) -> bool) {
        h.push(s);
        let last = h.len() - 1;
        up(h, last, less);
    }

    pub(super) fn pop(h: &mut Vec<Sample>, less: &impl Fn(f64, f64) -> bool) {
        let n = h.len() - 1;
        h.swap(0, n);
        down(h, 0, n, less);
        h.pop();
    }

    fn up(h: &mut [Sample], mut j: usize, less: &impl Fn(f64, f64) -> bool) {
        while j > 0 {
            let i = (j - 1) / 2;
            if !less(h[j].v, h[i].v) {
                break;
            }
            h.swap(i, j);
            j = i;
        }
    }

    fn down(h: &mut [Sample], i0: usize, n: usize, less: &impl Fn(f64, f64) -> bool) {
        let mut i = i0;
        loop {
            let j1 = 2 * i + 1;
            if j1 >= n {
                break;
            }
            let mut j = j1;
            let j2 = j1 + 1;
            if j2 < n && less(h[j2].v, h[j1].v) {
                j = j2;
            }
            if !less(h[j].v, h[i].v) {
                break;
            }
            h.swap(i, j);
            i = j;
        }
    }
}
