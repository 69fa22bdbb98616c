//! Functions about labels, presence, types and order: `label_replace`, `label_join`,
//! `absent`, `scalar`, `vector`, `timestamp`, `sort`, `sort_desc`.

use super::{scalar_arg, string_arg, unwrap_paren, vector_arg};
use crate::promql::eval::Evaluator;
use crate::promql::value::{Sample, StepValue};
use crate::promql::EvalError;
use kappie_storage::{valid_label_name, Labels};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};
use std::cmp::Ordering;
use std::sync::Arc;

type Args<'a> = &'a [Box<Expr>];
type Out = Result<StepValue, EvalError>;

/// `label_replace(v, dst, replacement, src, regex)`: where the anchored `regex` matches the
/// value of `src`, set `dst` to `replacement` with `$1`/`${name}` expanded (an empty result
/// removes `dst`); other elements pass unchanged.
pub(crate) fn label_replace(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let dst = string_arg(args, 1)?;
    let replacement = string_arg(args, 2)?;
    let src = string_arg(args, 3)?;
    let pattern = string_arg(args, 4)?;
    let re = ev.regex(&pattern).map_err(|e| {
        EvalError::Execution(format!(
            "invalid regular expression in label_replace(): {pattern}: {e}"
        ))
    })?;
    if !valid_label_name(&dst) {
        return Err(EvalError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let v = vector_arg(ev, args, 0, ts)?;
    Ok(StepValue::Vector(
        v.into_iter()
            .map(|s| {
                let value = s.labels.get(&src).unwrap_or("");
                let labels = match re.captures(value) {
                    Some(caps) => {
                        let mut out = String::new();
                        caps.expand(&replacement, &mut out);
                        Arc::new(s.labels.with(&dst, &out))
                    }
                    None => s.labels,
                };
                Sample {
                    labels,
                    v: s.v,
                    t: ts,
                }
            })
            .collect(),
    ))
}

/// `label_join(v, dst, separator, src...)`: `dst` becomes the `src` values joined.
pub(crate) fn label_join(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let dst = string_arg(args, 1)?;
    let sep = string_arg(args, 2)?;
    let srcs = (3..args.len())
        .map(|i| string_arg(args, i))
        .collect::<Result<Vec<_>, _>>()?;
    if !valid_label_name(&dst) {
        return Err(EvalError::Execution(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    if let Some(bad) = srcs.iter().find(|s| !valid_label_name(s)) {
        return Err(EvalError::Execution(format!(
            "invalid source label name in label_join(): {bad}"
        )));
    }
    let v = vector_arg(ev, args, 0, ts)?;
    Ok(StepValue::Vector(
        v.into_iter()
            .map(|s| {
                let joined = srcs
                    .iter()
                    .map(|n| s.labels.get(n).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(&sep);
                Sample {
                    labels: Arc::new(s.labels.with(&dst, &joined)),
                    v: s.v,
                    t: ts,
                }
            })
            .collect(),
    ))
}

/// The labels `absent` gives its element: the selector's equality matchers, except names
/// that appear in more than one matcher or in a matcher of another kind.
pub(crate) fn absent_labels(vs: &VectorSelector) -> Labels {
    let ms = &vs.matchers.matchers;
    let mut l = Labels::default();
    for m in ms {
        if m.name == "__name__" {
            continue;
        }
        let once = ms.iter().filter(|x| x.name == m.name).count() == 1;
        if once && matches!(m.op, MatchOp::Equal) && valid_label_name(&m.name) {
            l = l.with(&m.name, &m.value);
        }
    }
    l
}

pub(crate) fn absent(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    if !vector_arg(ev, args, 0, ts)?.is_empty() {
        return Ok(StepValue::Vector(Vec::new()));
    }
    let labels = match unwrap_paren(&args[0]) {
        Expr::VectorSelector(vs) => absent_labels(vs),
        _ => Labels::default(),
    };
    Ok(StepValue::Vector(vec![Sample {
        labels: Arc::new(labels),
        v: 1.0,
        t: ts,
    }]))
}

/// The single element's value, or NaN unless there is exactly one.
pub(crate) fn scalar(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let v = vector_arg(ev, args, 0, ts)?;
    Ok(StepValue::Scalar(if v.len() == 1 {
        v[0].v
    } else {
        f64::NAN
    }))
}

pub(crate) fn vector(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let v = scalar_arg(ev, args, 0, ts)?;
    Ok(StepValue::Vector(vec![Sample {
        labels: Arc::new(Labels::default()),
        v,
        t: ts,
    }]))
}

/// The time of each element's sample in seconds: the stored sample's own time when the
/// argument is a selector, the evaluation time otherwise.
pub(crate) fn timestamp(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let direct = matches!(unwrap_paren(&args[0]), Expr::VectorSelector(_));
    let v = vector_arg(ev, args, 0, ts)?;
    Ok(StepValue::Vector(
        v.into_iter()
            .map(|s| Sample {
                labels: Arc::new(s.labels.without_name()),
                v: if direct { s.t } else { ts } as f64 / 1000.0,
                t: ts,
            })
            .collect(),
    ))
}

/// Orders by value, NaN last either way (only visible in instant queries).
fn sorted(ev: &mut Evaluator, args: Args, ts: i64, desc: bool) -> Out {
    let mut v = vector_arg(ev, args, 0, ts)?;
    v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ if desc => b.v.partial_cmp(&a.v).unwrap_or(Ordering::Equal),
        _ => a.v.partial_cmp(&b.v).unwrap_or(Ordering::Equal),
    });
    Ok(StepValue::Vector(v))
}

pub(crate) fn sort(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    sorted(ev, args, ts, false)
}

pub(crate) fn sort_desc(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    sorted(ev, args, ts, true)
}
