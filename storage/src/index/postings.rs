//! The inverted index: one sled key per label pair, `P name 0xff value 0xff`, whose value
//! is the roaring bitmap of the ids of the series with that label. Matchers resolve to
//! bitmaps that are intersected.
//!
//! Postings change when series are created (by a commit or a replayed log record) or
//! removed (by retention), by reading a bitmap, changing it and writing it back: a key per
//! label pair keeps sled's key count (and its per-key memory) near the number of distinct
//! label pairs instead of series x labels. A commit's new postings are not written then:
//! they wait in [`IndexPending`] (its log record is what makes them durable) and go to
//! sled together at a durable mark, one read and write per touched label pair for all the
//! commits since. Reads ([`PostingsReader`]) see sled and the pending ones.

use crate::index::SeriesDelta;
use crate::keys;
use crate::labels::{MatchOp, Matcher};
use crate::{SeriesId, StorageError};
use roaring::RoaringTreemap;
use std::collections::BTreeMap;
use std::sync::RwLock;

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

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Read, change, write back each touched bitmap (callers hold the write lock).
    pub fn apply(&self, db: &sled::Db) -> Result<(), StorageError> {
        let mut touched: BTreeMap<&[u8], RoaringTreemap> = BTreeMap::new();
        for (k, ids) in &self.add {
            let mut bm = get(db, k)?;
            bm |= ids;
            touched.insert(k, bm);
        }
        for (k, ids) in &self.remove {
            let mut bm = match touched.remove(k.as_slice()) {
                Some(bm) => bm,
                None => get(db, k)?,
            };
            bm -= ids;
            touched.insert(k, bm);
        }
        for (k, bm) in touched {
            put(db, k, &bm)?;
        }
        Ok(())
    }
}

/// Writes (or, empty, removes) the bitmap of posting key `k`.
fn put(db: &sled::Db, k: &[u8], bm: &RoaringTreemap) -> Result<(), StorageError> {
    if bm.is_empty() {
        db.remove(k)?;
    } else {
        let mut buf = Vec::with_capacity(bm.serialized_size());
        bm.serialize_into(&mut buf)
            .map_err(|e| StorageError::Corrupt(format!("postings bitmap: {e}")))?;
        db.insert(k, buf)?;
    }
    Ok(())
}

/// The pending ids of one label pair: a short list while they are few (a label value
/// unique to one series, as a replaced pod's name, costs about 100 bytes instead of a
/// roaring treemap's 400), a bitmap past that.
#[derive(Debug)]
enum PendingIds {
    Few(Vec<SeriesId>),
    Many(RoaringTreemap),
}

/// Most ids a [`PendingIds::Few`] holds.
const FEW_IDS: usize = 16;

impl PendingIds {
    fn new(ids: RoaringTreemap) -> Self {
        if ids.len() as usize <= FEW_IDS {
            PendingIds::Few(ids.into_iter().collect())
        } else {
            PendingIds::Many(ids)
        }
    }

    fn extend(&mut self, ids: RoaringTreemap) {
        match self {
            PendingIds::Few(v) if v.len() + ids.len() as usize <= FEW_IDS => v.extend(ids),
            PendingIds::Few(v) => {
                let mut bm: RoaringTreemap = v.iter().copied().collect();
                bm |= ids;
                *self = PendingIds::Many(bm);
            }
            PendingIds::Many(bm) => *bm |= ids,
        }
    }

    fn add_to(&self, bm: &mut RoaringTreemap) {
        match self {
            PendingIds::Few(v) => bm.extend(v.iter().copied()),
            PendingIds::Many(ids) => *bm |= ids,
        }
    }

    fn to_bitmap(&self) -> RoaringTreemap {
        let mut bm = RoaringTreemap::new();
        self.add_to(&mut bm);
        bm
    }
}

/// Index entries of commits whose log records are durable but which are not in sled yet:
/// their postings (adds only: only retention removes, and it writes these first) and their
/// `S` entries. [`crate::Storage::mark_durable`] writes them; until then the log keeps
/// every record from `oldest_seq` on, and a crash replays them from there.
#[derive(Default)]
pub(crate) struct IndexPending {
    postings: BTreeMap<Box<[u8]>, PendingIds>,
    series: SeriesDelta,
    /// Sequence of the oldest log record whose entries are here.
    oldest_seq: Option<u64>,
}

impl IndexPending {
    /// Takes the new series of the commit whose log record is `seq`.
    pub fn absorb(&mut self, postings: PostingsDelta, series: SeriesDelta, seq: u64) {
        debug_assert!(postings.remove.is_empty(), "commits only add postings");
        if postings.is_empty() && series.is_empty() {
            return;
        }
        for (k, ids) in postings.add {
            match self.postings.get_mut(k.as_slice()) {
                Some(p) => p.extend(ids),
                None => {
                    self.postings.insert(k.into(), PendingIds::new(ids));
                }
            }
        }
        self.series.absorb(series);
        self.oldest_seq = Some(self.oldest_seq.map_or(seq, |o| o.min(seq)));
    }

    pub fn oldest_seq(&self) -> Option<u64> {
        self.oldest_seq
    }

    /// Writes postings, then `S` entries, to sled (unflushed); [`IndexPending::clear`] once
    /// they are flushed. Postings go first: a series entry without its postings is removed
    /// at open (and its log record, still kept, adds it again).
    pub fn write(&self, db: &sled::Db) -> Result<(), StorageError> {
        for (k, ids) in &self.postings {
            let mut bm = get(db, k)?;
            ids.add_to(&mut bm);
            put(db, k, &bm)?;
        }
        self.series.apply(db)
    }

    pub fn clear(&mut self) {
        *self = IndexPending::default();
    }
}

/// Postings as reads see them: sled's and the pending ones.
#[derive(Clone, Copy)]
pub(crate) struct PostingsReader<'a> {
    pub db: &'a sled::Db,
    pub pending: &'a RwLock<IndexPending>,
}

impl PostingsReader<'_> {
    /// The pending ids of `key`, taken before sled is read: a durable mark that moves them
    /// into sled meanwhile leaves them in one of the two.
    fn pending_of(&self, key: &[u8]) -> Option<RoaringTreemap> {
        let p = self.pending.read().unwrap_or_else(|e| e.into_inner());
        p.postings.get(key).map(PendingIds::to_bitmap)
    }

    fn get(&self, key: &[u8]) -> Result<RoaringTreemap, StorageError> {
        let pending = self.pending_of(key);
        let mut ids = get(self.db, key)?;
        if let Some(p) = pending {
            ids |= p;
        }
        Ok(ids)
    }

    /// Pending postings of label `name` by value (read before sled, as in `pending_of`).
    fn pending_of_name(&self, name: &str) -> BTreeMap<String, RoaringTreemap> {
        let prefix = name_prefix(name);
        let p = self.pending.read().unwrap_or_else(|e| e.into_inner());
        p.postings
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix.as_slice()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, ids)| {
                let (_, value) = keys::split_posting(k)?;
                Some((value.to_owned(), ids.to_bitmap()))
            })
            .collect()
    }
}

/// Ids of the series that satisfy every matcher. `all` is every series id (for matchers
/// that also match series without the label).
pub(crate) fn resolve(
    db: PostingsReader<'_>,
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
    db: PostingsReader<'_>,
    m: &Matcher,
    all: &impl Fn() -> RoaringTreemap,
) -> Result<RoaringTreemap, StorageError> {
    if let Some(values) = m.literal_values() {
        let mut ids = RoaringTreemap::new();
        for v in values {
            ids |= db.get(&keys::posting(&m.name, v))?;
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
            picked |= ids.decode()?;
        }
    }
    if matches_empty {
        Ok(all() - picked)
    } else {
        Ok(picked)
    }
}

/// Every value of a label name with its series ids.
pub(crate) fn postings_of_name<'a>(
    db: PostingsReader<'a>,
    name: &str,
) -> impl Iterator<Item = Result<(String, RoaringTreemap), StorageError>> + 'a {
    posting_values_of_name(db, name).map(|e| {
        let (value, ids) = e?;
        Ok((value, ids.decode()?))
    })
}

/// `P name 0xff`: the start of every posting key of label `name`.
fn name_prefix(name: &str) -> Vec<u8> {
    keys::with_prefix(keys::POSTING, &[name.as_bytes(), &[0xff]])
}

/// The ids of one label value, still encoded where sled has them.
struct ValueIds {
    stored: Option<sled::IVec>,
    pending: Option<RoaringTreemap>,
}

impl ValueIds {
    fn decode(self) -> Result<RoaringTreemap, StorageError> {
        let mut ids = match &self.stored {
            Some(b) => decode(b)?,
            None => RoaringTreemap::new(),
        };
        if let Some(p) = self.pending {
            ids |= p;
        }
        Ok(ids)
    }
}

/// Every value of a label name with its ids, sled's values in key order, then the values
/// only pending have.
fn posting_values_of_name<'a>(
    db: PostingsReader<'a>,
    name: &str,
) -> impl Iterator<Item = Result<(String, ValueIds), StorageError>> + 'a {
    let mut pending = db.pending_of_name(name);
    let prefix = name_prefix(name);
    let plen = prefix.len();
    let mut stored_done = false;
    let mut scan = db.db.scan_prefix(prefix);
    let mut rest: Option<std::collections::btree_map::IntoIter<String, RoaringTreemap>> = None;
    std::iter::from_fn(move || {
        if !stored_done {
            match scan.next() {
                Some(kv) => {
                    let entry = (|| {
                        let (k, v) = kv?;
                        let corrupt = || StorageError::Corrupt("posting key".into());
                        let rest = k.get(plen..k.len().saturating_sub(1)).ok_or_else(corrupt)?;
                        let value = std::str::from_utf8(rest).map_err(|_| corrupt())?.to_owned();
                        let extra = pending.remove(&value);
                        Ok((
                            value,
                            ValueIds {
                                stored: Some(v),
                                pending: extra,
                            },
                        ))
                    })();
                    return Some(entry);
                }
                None => stored_done = true,
            }
        }
        let rest = rest.get_or_insert_with(|| std::mem::take(&mut pending).into_iter());
        rest.next().map(|(value, ids)| {
            Ok((
                value,
                ValueIds {
                    stored: None,
                    pending: Some(ids),
                },
            ))
        })
    })
}
