//! `histogram_quantile` over classic (`le`-labelled bucket) histograms, and the
//! native-histogram functions, which yield nothing for float samples.

use super::{scalar_arg, vector_arg};
use crate::promql::eval::Evaluator;
use crate::promql::value::{Sample, StepValue};
use crate::promql::EvalError;
use kappie_storage::Labels;
use promql_parser::parser::Expr;
use std::collections::HashMap;
use std::sync::Arc;

type Args<'a> = &'a [Box<Expr>];
type Out = Result<StepValue, EvalError>;

/// `histogram_count`, `histogram_sum`, `histogram_fraction`: defined on native histograms
/// only, which Kappie does not store, so every float sample is skipped as in Prometheus.
pub(crate) fn native_only(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    for a in args {
        ev.eval(a, ts)?;
    }
    Ok(StepValue::Vector(Vec::new()))
}

pub(crate) fn histogram_quantile(ev: &mut Evaluator, args: Args, ts: i64) -> Out {
    let q = scalar_arg(ev, args, 0, ts)?;
    let v = vector_arg(ev, args, 1, ts)?;
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for s in v {
        // A sample without a parseable `le` is not a bucket; Prometheus skips it.
        let Some(le) = s.labels.get("le").and_then(|x| x.parse::<f64>().ok()) else {
            continue;
        };
        let key = s.labels.filter(|n| n != "le" && n != "__name__");
        let i = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push((le, s.v));
    }
    Ok(StepValue::Vector(
        groups
            .into_iter()
            .map(|(labels, buckets)| Sample {
                labels: Arc::new(labels),
                v: bucket_quantile(q, buckets),
                t: ts,
            })
            .collect(),
    ))
}

/// Prometheus's `bucketQuantile`: linear interpolation inside the bucket holding the rank,
/// after merging equal bounds and forcing cumulative counts to be monotonic.
fn bucket_quantile(q: f64, mut b: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        return f64::NAN;
    }
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for (ub, c) in b {
        match merged.last_mut() {
            Some(l) if l.0 == ub => l.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for x in merged.iter_mut() {
        if x.1 > max {
            max = x.1;
        } else if x.1 < max {
            x.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = merged.len() - 1;
    let i = merged[..n].partition_point(|x| x.1 < rank);
    if i == n {
        return merged[n - 1].0;
    }
    if i == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[i].0, merged[i].1);
    if i > 0 {
        start = merged[i - 1].0;
        count -= merged[i - 1].1;
        rank -= merged[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::bucket_quantile;

    #[test]
    fn interpolates_inside_the_rank_bucket() {
        let b = vec![(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (f64::INFINITY, 40.0)];
        // rank 20 falls in (0.1, 0.5] holding 20 observations, 10 of them below rank.
        assert!((bucket_quantile(0.5, b.clone()) - 0.3).abs() < 1e-12);
        assert_eq!(bucket_quantile(1.0, b.clone()), 1.0);
        assert!(bucket_quantile(0.5, vec![(1.0, 3.0)]).is_nan());
        assert_eq!(bucket_quantile(-1.0, b), f64::NEG_INFINITY);
    }
}
