//! The series table: `S group` values in `main/`, one per 1,024 series ids, holding each
//! series' first sample time and its durable mark (`persisted maxt`, see
//! `Storage::mark_durable`).

use crate::keys;
use crate::{SeriesId, StorageError};
use std::collections::BTreeMap;

/// What a series entry of the `S` table records: its first sample time and its durable mark,
/// the end of its newest chunk known to be fsynced; `i64::MIN` for none yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeriesEntry {
    pub first_t: i64,
    pub persisted_maxt: i64,
}

const ENTRY_BYTES: usize = 18;

/// Decodes an `S` group value: `( id low bits u16 | first_t i64 | persisted maxt i64 )*`.
pub(crate) fn decode_group(
    group: u64,
    b: &[u8],
) -> Result<BTreeMap<SeriesId, SeriesEntry>, StorageError> {
    if !b.len().is_multiple_of(ENTRY_BYTES) {
        return Err(StorageError::Corrupt("series group value".into()));
    }
    Ok(b.chunks_exact(ENTRY_BYTES)
        .map(|e| {
            let low = u16::from_be_bytes([e[0], e[1]]) as u64;
            let i = |r: std::ops::Range<usize>| i64::from_be_bytes(e[r].try_into().expect("8"));
            (
                group << keys::GROUP_BITS | low,
                SeriesEntry {
                    first_t: i(2..10),
                    persisted_maxt: i(10..18),
                },
            )
        })
        .collect())
}

fn encode_group(entries: &BTreeMap<SeriesId, SeriesEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for (id, e) in entries {
        out.extend_from_slice(&((id & ((1 << keys::GROUP_BITS) - 1)) as u16).to_be_bytes());
        out.extend_from_slice(&e.first_t.to_be_bytes());
        out.extend_from_slice(&e.persisted_maxt.to_be_bytes());
    }
    out
}

/// Changes to the `S` table (series by id, grouped so sled holds a key per 1,024 series).
#[derive(Default)]
pub(crate) struct SeriesDelta {
    ops: BTreeMap<u64, Vec<(SeriesId, SeriesOp)>>,
}

#[derive(Clone, Copy)]
pub(crate) enum SeriesOp {
    Add { first_t: i64 },
    RaiseMaxt(i64),
    Remove,
}

impl SeriesDelta {
    pub fn push(&mut self, id: SeriesId, op: SeriesOp) {
        self.ops
            .entry(id >> keys::GROUP_BITS)
            .or_default()
            .push((id, op));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends `other`'s changes after this one's.
    pub fn absorb(&mut self, other: SeriesDelta) {
        for (group, ops) in other.ops {
            self.ops.entry(group).or_default().extend(ops);
        }
    }

    /// Read, change, write back each touched group (callers hold the write lock). Adding a
    /// series that is there keeps its entry (replaying a log record twice changes nothing).
    pub fn apply(&self, db: &sled::Db) -> Result<(), StorageError> {
        for (&group, ops) in &self.ops {
            let key = keys::series_group(group);
            let mut entries = match db.get(&key)? {
                Some(v) => decode_group(group, &v)?,
                None => BTreeMap::new(),
            };
            for &(id, op) in ops {
                match op {
                    SeriesOp::Add { first_t } => {
                        entries.entry(id).or_insert(SeriesEntry {
                            first_t,
                            persisted_maxt: i64::MIN,
                        });
                    }
                    SeriesOp::RaiseMaxt(t) => {
                        if let Some(e) = entries.get_mut(&id) {
                            e.persisted_maxt = e.persisted_maxt.max(t);
                        }
                    }
                    SeriesOp::Remove => {
                        entries.remove(&id);
                    }
                }
            }
            if entries.is_empty() {
                db.remove(key)?;
            } else {
                db.insert(key, encode_group(&entries))?;
            }
        }
        Ok(())
    }
}
