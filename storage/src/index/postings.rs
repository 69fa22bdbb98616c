//! The inverted index: one sled key per label pair, `P name 0xff value 0xff`, whose value
//! is the roaring bitmap of the ids of the series with that label. Matchers resolve to
//! bitmaps that are intersected.
//!
//! Postings change only when series are created (by a commit or a replayed log record)
//! or removed (by retention), always under the store's write lock, by reading a bitmap,
//! changing it and writing it back: a key per label pair keeps sled's key count (and its
//! per-key memory) near the number of distinct label pairs instead of series x labels.

use crate::keys;
use crate::labels::{MatchOp, Matcher};
use crate::{SeriesId, StorageError};
use roaring::RoaringTreemap;
use std::collections::BTreeMap;

pub(crate) fn decode(b: &[u8]) -> Result<RoaringTreemap, StorageError> {
    RoaringTreemap::deserialize_from(b)
        .map_err(|e| StorageError::Corrupt(format!("postings bitmap: {e}")))
}

fn get(db: &sled::Db, key: &[u8]) -> Result<RoaringTreemap, StorageError> {
    match db.get(key)? {
        Some(v) => decode(&v),
        None => Ok(RoaringTreemap::new()),
    }
}

/// Changes to postings, applied together.
#[derive(Default)]
pub(crate) struct PostingsDelta {
    add: BTreeMap<Vec<u8>, RoaringTreemap>,
    remove: BTreeMap<Vec<u8>, RoaringTreemap>,
}

impl PostingsDelta {
    pub fn add(&mut self, name: &str, value: &str, id: SeriesId) {
        self.add
            .entry(keys::posting(name, value))
            .or_default()
            .insert(id);
    }

    pub fn remove(&mut self, name: &str, value: &str, id: SeriesId) {
        self.remove
            .entry(keys::posting(name, value))
            .or_default()
            .insert(id);
    }

    /// Read, change, write back each touched bitmap (callers hold the write lock).
    pub fn apply(self, db: &sled::Db) -> Result<(), StorageError> {
        let mut touched: BTreeMap<Vec<u8>, RoaringTreemap> = BTreeMap::new();
        for (k, ids) in self.add {
            let mut bm = get(db, &k)?;
            bm |= ids;
            touched.insert(k, bm);
        }
        for (k, ids) in self.remove {
            let mut bm = match touched.remove(&k) {
                Some(bm) => bm,
                None => get(db, &k)?,
            };
            bm -= ids;
            touched.insert(k, bm);
        }
        for (k, bm) in touched {
            if bm.is_empty() {
                db.remove(k)?;
            } else {
                let mut buf = Vec::with_capacity(bm.serialized_size());
                bm.serialize_into(&mut buf)
                    .map_err(|e| StorageError::Corrupt(format!("postings bitmap: {e}")))?;
                db.insert(k, buf)?;
            }
        }
        Ok(())
    }
}

/// Ids of the series that satisfy every matcher. `all` is every series id (for matchers
/// that also match series without the label).
pub fn resolve(
    db: &sled::Db,
    matchers: &[Matcher],
    all: impl Fn() -> RoaringTreemap,
) -> Result<RoaringTreemap, StorageError> {
    let mut result: Option<RoaringTreemap> = None;
    // Matchers that select by a value first: they usually narrow the most. Matchers that
    // accept every value (`=~".*"`) narrow nothing and are left out.
    let mut ordered: Vec<&Matcher> = matchers
        .iter()
        .filter(|m| !m.matches_everything())
        .collect();
    ordered.sort_by_key(|m| match m.op {
        MatchOp::Equal if !m.value.is_empty() => 0,
        MatchOp::Regex => 1,
        _ => 2,
    });
    for m in ordered {
        let ids = resolve_one(db, m, &all)?;
        result = Some(match result {
            None => ids,
            Some(r) => r & ids,
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
    all: &impl Fn() -> RoaringTreemap,
) -> Result<RoaringTreemap, StorageError> {
    if let Some(values) = m.literal_values() {
        let mut ids = RoaringTreemap::new();
        for v in values {
            ids |= get(db, &keys::posting(&m.name, v))?;
        }
        return Ok(ids);
    }
    let matches_empty = m.matches("");
    let mut picked = RoaringTreemap::new();
    // Without the empty value, keep series whose value matches; with it, drop series whose
    // value does not (series without the label match too). Only the picked values' bitmaps
    // are decoded.
    for entry in posting_values_of_name(db, &m.name) {
        let (value, ids) = entry?;
        if m.matches(&value) != matches_empty {
            picked |= decode(&ids)?;
        }
    }
    if matches_empty {
        Ok(all() - picked)
    } else {
        Ok(picked)
    }
}

/// Every value of a label name with its series ids.
pub fn postings_of_name<'a>(
    db: &'a sled::Db,
    name: &str,
) -> impl Iterator<Item = Result<(String, RoaringTreemap), StorageError>> + 'a {
    posting_values_of_name(db, name).map(|e| {
        let (value, ids) = e?;
        Ok((value, decode(&ids)?))
    })
}

/// Every value of a label name with its encoded bitmap.
fn posting_values_of_name<'a>(
    db: &'a sled::Db,
    name: &str,
) -> impl Iterator<Item = Result<(String, sled::IVec), StorageError>> + 'a {
    let prefix = keys::with_prefix(keys::POSTING, &[name.as_bytes(), &[0xff]]);
    let plen = prefix.len();
    db.scan_prefix(prefix).map(move |kv| {
        let (k, v) = kv?;
        let corrupt = || StorageError::Corrupt("posting key".into());
        let rest = k.get(plen..k.len().saturating_sub(1)).ok_or_else(corrupt)?;
        let value = std::str::from_utf8(rest).map_err(|_| corrupt())?.to_owned();
        Ok((value, v))
    })
}
