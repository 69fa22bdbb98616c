//! The shipper inventory: the node shippers the collector knows and when each last pushed,
//! for `GET /api/v1/kappie/shippers` and `kappie_shipper_last_push_timestamp_seconds`.
//!
//! Ingest keeps a small record per shipper in the store's ingest state (`shp/` ++ shipper
//! id -> JSON; layout in `storage/docs/format.md`): written in a commit of its own on Hello
//! and in the same commit as every applied batch, so the inventory survives a restart at no
//! extra fsync per push. The last applied sequence is ingest's own `seq/` key, written in
//! that same commit. The series count and the recent sample rate are kept in memory only.
//!
//! Lock order: ingest holds its `Core` lock while it calls in here; nothing here calls out,
//! so the inventory's lock is always the inner one.

use kappie_storage::{Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Prefix of the records' keys in the ingest state.
pub const RECORD_PREFIX: &[u8] = b"shp/";
/// Prefix of ingest's last-applied-sequence keys (`"seq/" ++ shipper id -> u64 BE`).
pub const SEQUENCE_PREFIX: &[u8] = b"seq/";

/// Window of [`Shipper::samples_last_minute`], in seconds.
const RATE_WINDOW_S: i64 = 60;

pub fn record_key(shipper: &str) -> Vec<u8> {
    [RECORD_PREFIX, shipper.as_bytes()].concat()
}

pub fn sequence_key(shipper: &str) -> Vec<u8> {
    [SEQUENCE_PREFIX, shipper.as_bytes()].concat()
}

/// What is persisted per shipper. Times are the collector's clock, ms since the epoch.
/// Fields missing from a stored record read as their defaults and unknown ones are ignored,
/// so the record can grow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Record {
    pub node_name: String,
    pub cluster: String,
    pub version: String,
    pub session: u64,
    /// When the current session's Hello arrived (or its first batch, without a Hello).
    pub session_start_ms: Option<i64>,
    /// When the last batch was applied.
    pub last_push_ms: Option<i64>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record of strings and integers serializes")
    }

    pub fn decode(b: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

/// One shipper as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipper {
    pub shipper_id: String,
    pub record: Record,
    pub last_sequence: u64,
    /// Series defined in the current session (0 after a restart until it pushes).
    pub series: usize,
    /// Samples applied in the last [`RATE_WINDOW_S`] seconds.
    pub samples_last_minute: u64,
}

#[derive(Default)]
struct Entry {
    record: Record,
    last_sequence: u64,
    series: usize,
    /// Samples applied per second (collector clock, s since the epoch), oldest first, at
    /// most [`RATE_WINDOW_S`] entries.
    recent: VecDeque<(i64, u64)>,
}

impl Entry {
    fn samples_since(&self, first_s: i64) -> u64 {
        self.recent
            .iter()
            .filter(|(s, _)| *s >= first_s)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The shippers known, by id.
#[derive(Default)]
pub struct Inventory {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Inventory {
    /// The shippers of the store's records, with their last applied sequences. Shippers
    /// with a sequence but no record (a data directory from before the inventory) are
    /// listed with empty names until they say Hello. A damaged record is logged and read as
    /// an empty one: the inventory is for operators and must not stop ingest.
    pub fn load(store: &Storage) -> Result<Inventory, StorageError> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (k, v) in store.meta_scan_prefix(RECORD_PREFIX)? {
            let Some(id) = id_of(&k, RECORD_PREFIX) else {
                continue;
            };
            let record = Record::decode(&v).unwrap_or_else(|e| {
                tracing::warn!(shipper = %id, error = %e, "stored shipper record is damaged; listing the shipper without it");
                Record::default()
            });
            entries.insert(
                id,
                Entry {
                    record,
                    ..Entry::default()
                },
            );
        }
        for (k, v) in store.meta_scan_prefix(SEQUENCE_PREFIX)? {
            let Some(id) = id_of(&k, SEQUENCE_PREFIX) else {
                continue;
            };
            let seq = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes);
            entries.entry(id).or_default().last_sequence = seq.unwrap_or(0);
        }
        Ok(Inventory {
            entries: Mutex::new(entries),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a Hello at `now_ms` and returns the record to persist. A Hello again in the
    /// same session (a reconnect) keeps the session's start.
    pub fn hello(
        &self,
        shipper: &str,
        session: u64,
        node_name: &str,
        cluster: &str,
        version: &str,
        now_ms: i64,
    ) -> Record {
        let mut entries = self.lock();
        let e = entries.entry(shipper.to_owned()).or_default();
        if e.record.session != session || e.record.session_start_ms.is_none() {
            e.record.session = session;
            e.record.session_start_ms = Some(now_ms);
            e.series = 0;
        }
        e.record.node_name = node_name.to_owned();
        e.record.cluster = cluster.to_owned();
        e.record.version = version.to_owned();
        e.record.clone()
    }

    /// The record `shipper` has once a batch of `session` is applied at `now_ms`; write it in
    /// the batch's commit, then call [`Inventory::applied`]. Changes nothing by itself.
    pub fn record_after_push(&self, shipper: &str, session: u64, now_ms: i64) -> Record {
        let mut r = self
            .lock()
            .get(shipper)
            .map(|e| e.record.clone())
            .unwrap_or_default();
        if r.session != session || r.session_start_ms.is_none() {
            r.session = session;
            r.session_start_ms = Some(now_ms);
        }
        r.last_push_ms = Some(now_ms);
        r
    }

    /// A batch was committed with `record`: `sequence` is the last applied, the session now
    /// has `series` series and `samples` samples were appended at `now_ms`.
    pub fn applied(
        &self,
        shipper: &str,
        record: Record,
        sequence: u64,
        series: usize,
        samples: u64,
        now_ms: i64,
    ) {
        let mut entries = self.lock();
        let e = entries.entry(shipper.to_owned()).or_default();
        e.record = record;
        e.last_sequence = sequence;
        e.series = series;
        let now_s = now_ms.div_euclid(1000);
        match e.recent.back_mut() {
            Some((s, n)) if *s == now_s => *n += samples,
            _ => e.recent.push_back((now_s, samples)),
        }
        while e
            .recent
            .front()
            .is_some_and(|(s, _)| *s <= now_s - RATE_WINDOW_S)
        {
            e.recent.pop_front();
        }
    }

    /// Every shipper known, by node name and then shipper id.
    pub fn list(&self, now_ms: i64) -> Vec<Shipper> {
        let first_s = now_ms.div_euclid(1000) - RATE_WINDOW_S + 1;
        let mut out: Vec<Shipper> = self
            .lock()
            .iter()
            .map(|(id, e)| Shipper {
                shipper_id: id.clone(),
                record: e.record.clone(),
                last_sequence: e.last_sequence,
                series: e.series,
                samples_last_minute: e.samples_since(first_s),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.record.node_name, &a.shipper_id).cmp(&(&b.record.node_name, &b.shipper_id))
        });
        out
    }
}

/// The shipper id of an ingest-state key under `prefix`; `None` (logged) when it is not
/// UTF-8, which ingest never writes.
fn id_of(key: &[u8], prefix: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix)?;
    match String::from_utf8(rest.to_vec()) {
        Ok(id) => Some(id),
        Err(_) => {
            tracing::warn!(key = ?key, "ingest state key with a shipper id that is not UTF-8; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_last_minute_counts_the_last_60_seconds() {
        let inv = Inventory::default();
        let t0 = 1_700_000_000_000;
        let rec = inv.record_after_push("a", 1, t0);
        inv.applied("a", rec.clone(), 1, 2, 5, t0);
        inv.applied("a", rec.clone(), 2, 2, 7, t0 + 30_000);
        assert_eq!(inv.list(t0 + 59_999)[0].samples_last_minute, 12);
        assert_eq!(inv.list(t0 + 60_000)[0].samples_last_minute, 7);
        inv.applied("a", rec, 3, 2, 1, t0 + 120_000);
        assert_eq!(inv.list(t0 + 120_000)[0].samples_last_minute, 1);
    }

    #[test]
    fn a_hello_in_the_same_session_keeps_its_start() {
        let inv = Inventory::default();
        let first = inv.hello("a", 7, "node-a", "c", "1.0", 1000);
        let again = inv.hello("a", 7, "node-a", "c", "1.1", 5000);
        assert_eq!(again.session_start_ms, Some(1000));
        assert_eq!(again.version, "1.1");
        let next = inv.hello("a", 8, "node-a", "c", "1.1", 9000);
        assert_eq!(next.session_start_ms, Some(9000));
        assert_eq!(first.session, 7);
    }

    #[test]
    fn records_read_back_and_tolerate_missing_fields() {
        let r = Record {
            node_name: "n\"1".into(),
            cluster: "c".into(),
            version: "v".into(),
            session: u64::MAX,
            session_start_ms: Some(1),
            last_push_ms: None,
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let old = Record::decode(br#"{"nodeName":"x","futureField":1}"#).unwrap();
        assert_eq!(old.node_name, "x");
        assert_eq!(old.last_push_ms, None);
    }
}
