//! The inverted index: postings `label=value -> series ids` as sled keys
//! (`P name 0xff value 0xff id`), resolved per matcher and intersected.

use crate::keys;
use crate::labels::{MatchOp, Matcher};
use crate::{SeriesId, StorageError};
use std::collections::BTreeSet;

/// Ids of the series that satisfy every matcher. `all` is every series id (for matchers
/// that also match series without the label).
pub fn resolve(
    db: &sled::Db,
    matchers: &[Matcher],
    all: impl Fn() -> BTreeSet<SeriesId>,
) -> Result<BTreeSet<SeriesId>, StorageError> {
    let mut result: Option<BTreeSet<SeriesId>> = None;
    // Matchers that select by a value first: they usually narrow the most.
    let mut ordered: Vec<&Matcher> = matchers.iter().collect();
    ordered.sort_by_key(|m| match m.op {
        MatchOp::Equal if !m.value.is_empty() => 0,
        MatchOp::Regex => 1,
        _ => 2,
    });
    for m in ordered {
        let ids = resolve_one(db, m, &all)?;
        result = Some(match result {
            None => ids,
            Some(r) => r.intersection(&ids).copied().collect(),
        });
        if result.as_ref().is_some_and(|r| r.is_empty()) {
            break;
        }
    }
    Ok(result.unwrap_or_else(all))
}

fn resolve_one(
    db: &sled::Db,
    m: &Matcher,
    all: &impl Fn() -> BTreeSet<SeriesId>,
) -> Result<BTreeSet<SeriesId>, StorageError> {
    if m.op == MatchOp::Equal && !m.value.is_empty() {
        let prefix = keys::with_prefix(
            keys::POSTING,
            &[m.name.as_bytes(), &[0xff], m.value.as_bytes(), &[0xff]],
        );
        return db
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, _) = kv?;
                keys::be_u64(&k[prefix.len()..])
                    .ok_or_else(|| StorageError::Corrupt("posting key".into()))
            })
            .collect();
    }
    let matches_empty = m.matches("");
    let mut picked = BTreeSet::new();
    for entry in postings_of_name(db, &m.name) {
        let (value, id) = entry?;
        // Without the empty value, keep series whose value matches; with it, drop series
        // whose value does not (series without the label match too).
        if m.matches(&value) != matches_empty {
            picked.insert(id);
        }
    }
    if matches_empty {
        let mut a = all();
        a.retain(|id| !picked.contains(id));
        Ok(a)
    } else {
        Ok(picked)
    }
}

/// Every `(value, id)` posting of a label name.
pub fn postings_of_name<'a>(
    db: &'a sled::Db,
    name: &str,
) -> impl Iterator<Item = Result<(String, SeriesId), StorageError>> + 'a {
    let prefix = keys::with_prefix(keys::POSTING, &[name.as_bytes(), &[0xff]]);
    let plen = prefix.len();
    db.scan_prefix(prefix).map(move |kv| {
        let (k, _) = kv?;
        let rest = &k[plen..];
        let corrupt = || StorageError::Corrupt("posting key".into());
        if rest.len() < 9 {
            return Err(corrupt());
        }
        let value = std::str::from_utf8(&rest[..rest.len() - 9])
            .map_err(|_| corrupt())?
            .to_owned();
        let id = keys::be_u64(&rest[rest.len() - 8..]).ok_or_else(corrupt)?;
        Ok((value, id))
    })
}
