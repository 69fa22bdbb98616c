//! Binary operators: arithmetic, comparison (with and without `bool`) and the set operators,
//! between scalars and vectors, with `on`/`ignoring` and `group_left`/`group_right` matching.

use super::eval::Evaluator;
use super::value::{Sample, StepValue};
use super::{display_labels, EvalError};
use kappie_storage::Labels;
use promql_parser::label::Labels as NameList;
use promql_parser::parser::token::*;
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(crate) fn eval(ev: &mut Evaluator, b: &BinaryExpr, ts: i64) -> Result<StepValue, EvalError> {
    let op = b.op.id();
    let m = b.modifier.as_ref();
    if m.is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some()) {
        return Err(EvalError::Execution(
            "fill modifiers are not supported (they are newer than Prometheus 2.42)".into(),
        ));
    }
    let return_bool = m.is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs, ts)?;
    let rhs = ev.eval(&b.rhs, ts)?;
    match (lhs, rhs) {
        (StepValue::Scalar(l), StepValue::Scalar(r)) => {
            let (v, keep) = elem(op, l, r)?;
            Ok(StepValue::Scalar(if is_comparison(op) {
                f64::from(u8::from(keep))
            } else {
                v
            }))
        }
        (StepValue::Vector(v), StepValue::Scalar(s)) => {
            vector_scalar(op, v, s, false, return_bool, ts).map(StepValue::Vector)
        }
        (StepValue::Scalar(s), StepValue::Vector(v)) => {
            vector_scalar(op, v, s, true, return_bool, ts).map(StepValue::Vector)
        }
        (StepValue::Vector(l), StepValue::Vector(r)) => {
            let (on, names) = match m.and_then(|m| m.matching.as_ref()) {
                Some(LabelModifier::Include(l)) => (true, names(l)),
                Some(LabelModifier::Exclude(l)) => (false, names(l)),
                None => (false, Vec::new()),
            };
            let sig = |l: &Labels| signature(l, on, &names);
            match op {
                T_LAND => Ok(StepValue::Vector(and_unless(l, &r, sig, true))),
                T_LUNLESS => Ok(StepValue::Vector(and_unless(l, &r, sig, false))),
                T_LOR => Ok(StepValue::Vector(or(l, r, sig))),
                _ => {
                    let card = m.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
                    vector_vector(op, l, r, card, on, &names, return_bool, ts)
                        .map(StepValue::Vector)
                }
            }
        }
        (l, r) => Err(EvalError::Execution(format!(
            "binary operator {} is not defined between {} and {}",
            b.op,
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn names(l: &NameList) -> Vec<String> {
    l.labels.clone()
}

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic operators drop the metric name; comparisons and (in Prometheus 2.42)
/// `atan2` keep it.
fn drops_name(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW)
}

/// `(value, keep)`: the result of `l op r`; for comparisons the value is `l` and `keep`
/// says whether the comparison holds.
fn elem(op: u16, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        other => {
            return Err(EvalError::Execution(format!(
                "operator {} is not defined on numbers",
                TokenType::new(other)
            )))
        }
    })
}

fn vector_scalar(
    op: u16,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
    return_bool: bool,
    ts: i64,
) -> Result<Vec<Sample>, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    for x in v {
        let (l, r) = if scalar_left { (s, x.v) } else { (x.v, s) };
        let (mut value, mut keep) = elem(op, l, r)?;
        // A comparison keeps the vector element's value, whichever side it is on.
        if is_comparison(op) && scalar_left {
            value = r;
        }
        if return_bool {
            value = f64::from(u8::from(keep));
            keep = true;
        }
        if keep {
            let labels = if drops_name(op) || return_bool {
                Arc::new(x.labels.without_name())
            } else {
                x.labels
            };
            out.push(Sample {
                labels,
                v: value,
                t: ts,
            });
        }
    }
    Ok(out)
}

/// The matching key of a series: the `on` labels, or all but the `ignoring` ones and the
/// metric name.
fn signature(l: &Labels, on: bool, names: &[String]) -> Labels {
    if on {
        l.filter(|n| names.iter().any(|x| x == n))
    } else {
        l.filter(|n| n != "__name__" && !names.iter().any(|x| x == n))
    }
}

fn and_unless(
    l: Vec<Sample>,
    r: &[Sample],
    sig: impl Fn(&Labels) -> Labels,
    keep_matched: bool,
) -> Vec<Sample> {
    let right: HashSet<Labels> = r.iter().map(|s| sig(&s.labels)).collect();
    l.into_iter()
        .filter(|s| right.contains(&sig(&s.labels)) == keep_matched)
        .collect()
}

fn or(l: Vec<Sample>, r: Vec<Sample>, sig: impl Fn(&Labels) -> Labels) -> Vec<Sample> {
    let left: HashSet<Labels> = l.iter().map(|s| sig(&s.labels)).collect();
    let mut out = l;
    out.extend(r.into_iter().filter(|s| !left.contains(&sig(&s.labels))));
    out
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    op: u16,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    on: bool,
    names: &[String],
    return_bool: bool,
    ts: i64,
) -> Result<Vec<Sample>, EvalError> {
    let (include, swapped) = match card {
        VectorMatchCardinality::OneToOne => (None, false),
        VectorMatchCardinality::ManyToOne(l) => (Some(&l.labels), false),
        VectorMatchCardinality::OneToMany(l) => (Some(&l.labels), true),
        VectorMatchCardinality::ManyToMany => {
            return Err(EvalError::Execution(
                "many-to-many only allowed for set operators".into(),
            ))
        }
    };
    // The right side is the "one" side; for group_right the sides swap.
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_by_sig: HashMap<Labels, &Sample> = HashMap::with_capacity(one.len());
    for s in &one {
        let sig = signature(&s.labels, on, names);
        if let Some(dup) = one_by_sig.get(&sig) {
            return Err(EvalError::Execution(format!(
                "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                display_labels(&sig),
                if swapped { "left" } else { "right" },
                display_labels(&s.labels),
                display_labels(&dup.labels),
            )));
        }
        one_by_sig.insert(sig, s);
    }
    let mut matched: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for ms in &many {
        let sig = signature(&ms.labels, on, names);
        let Some(os) = one_by_sig.get(&sig) else {
            continue;
        };
        let (l, r) = if swapped { (os.v, ms.v) } else { (ms.v, os.v) };
        let (mut value, keep) = elem(op, l, r)?;
        if return_bool {
            value = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        let mut labels = result_labels(&ms.labels, &os.labels, op, include, on, names);
        if return_bool {
            labels = labels.without_name();
        }
        let inserted = matched.entry(sig).or_default();
        if include.is_none() {
            if !inserted.is_empty() {
                return Err(EvalError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
            inserted.insert(Labels::default());
        } else if !inserted.insert(labels.clone()) {
            return Err(EvalError::Execution(
                "multiple matches for labels: grouping labels must ensure unique results".into(),
            ));
        }
        out.push(Sample {
            labels: Arc::new(labels),
            v: value,
            t: ts,
        });
    }
    Ok(out)
}

/// The labels of a vector-vector result: the "many" side's, without the metric name for
/// arithmetic, cut to the matching labels for one-to-one, plus `group_x` labels copied from
/// the "one" side.
fn result_labels(
    many: &Labels,
    one: &Labels,
    op: u16,
    include: Option<&Vec<String>>,
    on: bool,
    names: &[String],
) -> Labels {
    let mut l = if drops_name(op) {
        many.without_name()
    } else {
        many.clone()
    };
    match include {
        None if on => l = l.filter(|n| names.iter().any(|x| x == n)),
        None => l = l.filter(|n| !names.iter().any(|x| x == n)),
        Some(inc) => {
            for n in inc {
                l = l.with(n, one.get(n).unwrap_or(""));
            }
        }
    }
    l
}
