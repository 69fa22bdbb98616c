//! The first, simple engine: one sled tree, one key per sample.
//!
//! Byte layout: `storage/docs/format.md`. Every write of one [`StorageAppender`] goes into a
//! single `sled::Batch` applied atomically and then flushed (fsync) before `commit` returns,
//! which is what lets the collector acknowledge a batch only once it is durable.

use crate::labels::{Labels, Matcher};
use crate::{Appender, Querier, Sample, Series, SeriesId, StorageError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const P_SERIES_BY_LABELS: u8 = b'S';
const P_LABELS_BY_ID: u8 = b'I';
const P_SAMPLE: u8 = b'D';
const P_META: u8 = b'M';

/// An ingest-state key and its value.
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// Store settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    next_id: AtomicU64,
    series: RwLock<SeriesMaps>,
}

#[derive(Default)]
struct SeriesMaps {
    by_labels: HashMap<Vec<u8>, SeriesId>,
    by_id: HashMap<SeriesId, Labels>,
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Timestamps as big-endian u64 with the sign bit flipped, so byte order is time order.
fn ts_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn sample_key(id: SeriesId, t: i64) -> Vec<u8> {
    key(P_SAMPLE, &[&id.to_be_bytes(), &ts_bytes(t)])
}

fn be_u64(b: &[u8], what: &str) -> Result<u64, StorageError> {
    let a: [u8; 8] = b.try_into().map_err(|_| {
        StorageError::Corrupt(format!("{what}: expected 8 bytes, found {}", b.len()))
    })?;
    Ok(u64::from_be_bytes(a))
}

impl Storage {
    /// Opens (or creates) the store in `dir` and loads the series table.
    pub fn open(dir: &Path, config: &StorageConfig) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_capacity_bytes)
            .open()?;
        let mut maps = SeriesMaps::default();
        let mut max_id = 0;
        for kv in db.scan_prefix([P_LABELS_BY_ID]) {
            let (k, v) = kv?;
            let id = be_u64(&k[1..], "series id key")?;
            let labels = Labels::decode(&v)?;
            maps.by_labels.insert(labels.encode(), id);
            maps.by_id.insert(id, labels);
            max_id = max_id.max(id);
        }
        tracing::info!(series = maps.by_id.len(), dir = %dir.display(), "opened store");
        Ok(Storage {
            inner: Arc::new(Inner {
                db,
                next_id: AtomicU64::new(max_id + 1),
                series: RwLock::new(maps),
            }),
        })
    }

    /// Starts an atomic write. Callers serialize appenders that may create the same new
    /// series (the collector's ingest holds one lock), or that series gets two ids.
    pub fn appender(&self) -> StorageAppender {
        StorageAppender {
            store: self.clone(),
            batch: sled::Batch::default(),
            new_series: HashMap::new(),
        }
    }

    /// Reads an ingest-state value written with [`Appender::set_meta`].
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.db.get(meta_key(key))?.map(|v| v.to_vec()))
    }

    /// Every ingest-state entry whose key starts with `prefix`, in key order.
    pub fn meta_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, StorageError> {
        self.inner
            .db
            .scan_prefix(meta_key(prefix))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k[1..].to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Number of series the store knows.
    pub fn series_count(&self) -> usize {
        self.read_maps().by_id.len()
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    fn read_maps(&self) -> std::sync::RwLockReadGuard<'_, SeriesMaps> {
        // A poisoned lock only means another thread panicked while holding it; the maps are
        // only ever replaced whole-entry, so they are still consistent.
        self.inner.series.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn meta_key(k: &[u8]) -> Vec<u8> {
    key(P_META, &[k])
}

/// The [`Appender`] of [`Storage`].
pub struct StorageAppender {
    store: Storage,
    batch: sled::Batch,
    new_series: HashMap<Vec<u8>, (SeriesId, Labels)>,
}

impl Appender for StorageAppender {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesId, StorageError> {
        if labels.get("__name__").is_none() {
            return Err(StorageError::InvalidLabels(
                "series without __name__".into(),
            ));
        }
        let enc = labels.encode();
        let known = self.store.read_maps().by_labels.get(&enc).copied();
        let id = match known {
            Some(id) => id,
            None => match self.new_series.get(&enc) {
                Some((id, _)) => *id,
                None => {
                    let id = self.store.inner.next_id.fetch_add(1, Ordering::Relaxed);
                    self.batch
                        .insert(key(P_SERIES_BY_LABELS, &[&enc]), &id.to_be_bytes());
                    self.batch
                        .insert(key(P_LABELS_BY_ID, &[&id.to_be_bytes()]), enc.clone());
                    self.new_series.insert(enc, (id, labels.clone()));
                    id
                }
            },
        };
        self.batch
            .insert(sample_key(id, t), &v.to_bits().to_be_bytes());
        Ok(id)
    }

    fn set_meta(&mut self, key: &[u8], value: &[u8]) {
        self.batch.insert(meta_key(key), value);
    }

    fn remove_meta(&mut self, key: &[u8]) {
        self.batch.remove(meta_key(key));
    }

    fn commit(self) -> Result<(), StorageError> {
        let inner = &self.store.inner;
        inner.db.apply_batch(self.batch)?;
        inner.db.flush()?;
        if !self.new_series.is_empty() {
            let mut maps = inner.series.write().unwrap_or_else(|e| e.into_inner());
            for (enc, (id, labels)) in self.new_series {
                maps.by_labels.insert(enc, id);
                maps.by_id.insert(id, labels);
            }
        }
        Ok(())
    }
}

impl Querier for Storage {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError> {
        let candidates: Vec<(SeriesId, Labels)> = self
            .read_maps()
            .by_id
            .iter()
            .filter(|(_, l)| matchers.iter().all(|m| m.matches_labels(l)))
            .map(|(id, l)| (*id, l.clone()))
            .collect();
        let mut out = Vec::new();
        if mint > maxt {
            return Ok(out);
        }
        for (id, labels) in candidates {
            let mut samples = Vec::new();
            for kv in self
                .inner
                .db
                .range(sample_key(id, mint)..=sample_key(id, maxt))
            {
                let (k, v) = kv?;
                let t = (be_u64(&k[9..], "sample key")? ^ (1 << 63)) as i64;
                let v = f64::from_bits(be_u64(&v, "sample value")?);
                samples.push(Sample { t, v });
            }
            if !samples.is_empty() {
                out.push(Series { labels, samples });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MatchOp;

    fn labels(name: &str, job: &str) -> Labels {
        Labels::new([("__name__", name), ("job", job)]).unwrap()
    }

    #[test]
    fn commit_is_visible_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &StorageConfig::default()).unwrap();
            let mut a = s.appender();
            a.append(&labels("up", "a"), -5, 1.0).unwrap();
            a.append(&labels("up", "a"), 10, 2.0).unwrap();
            a.append(&labels("up", "b"), 10, 3.0).unwrap();
            a.set_meta(b"seq/x", b"7");
            a.commit().unwrap();
        }
        let s = Storage::open(dir.path(), &StorageConfig::default()).unwrap();
        assert_eq!(s.series_count(), 2);
        assert_eq!(s.meta(b"seq/x").unwrap().as_deref(), Some(&b"7"[..]));
        let m = Matcher::new(MatchOp::Equal, "job", "a").unwrap();
        let got = s.select(&[m], -10, 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].samples,
            vec![Sample { t: -5, v: 1.0 }, Sample { t: 10, v: 2.0 }]
        );
        let m = Matcher::new(MatchOp::Regex, "__name__", "u.").unwrap();
        assert_eq!(s.select(std::slice::from_ref(&m), 0, 10).unwrap().len(), 2);
        assert_eq!(s.select(&[m], 0, 9).unwrap().len(), 0);
    }

    #[test]
    fn dropped_appender_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let mut a = s.appender();
        a.append(&labels("up", "a"), 1, 1.0).unwrap();
        a.set_meta(b"k", b"v");
        drop(a);
        assert_eq!(s.series_count(), 0);
        assert_eq!(s.meta(b"k").unwrap(), None);
        let m = Matcher::new(MatchOp::Equal, "__name__", "up").unwrap();
        assert!(s.select(&[m], i64::MIN, i64::MAX).unwrap().is_empty());
    }

    #[test]
    fn meta_prefix_scan() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageConfig::default()).unwrap();
        let mut a = s.appender();
        a.set_meta(b"def/a/1", b"x");
        a.set_meta(b"def/a/2", b"y");
        a.set_meta(b"def/b/1", b"z");
        a.commit().unwrap();
        let got = s.meta_scan_prefix(b"def/a/").unwrap();
        assert_eq!(
            got,
            vec![
                (b"def/a/1".to_vec(), b"x".to_vec()),
                (b"def/a/2".to_vec(), b"y".to_vec())
            ]
        );
    }
}
