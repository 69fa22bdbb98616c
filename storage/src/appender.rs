//! The [`Appender`] of [`Storage`]: validate against the head, append one record to the
//! log and fsync it, then apply to sled, the head and staging (see `Storage::mark_durable`
//! for what is durable when).

use crate::db::{
    corrupt, read_lock, series_keys, write_lock, CommitReport, Storage, StorageStats, Writes,
};
use crate::head::{append_to_head, HeadMap};
use crate::{wal, Appender, Labels, MetaBytes, SeriesId, StorageError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A series created by a commit: encoded labels and id.
type Created = (Arc<[u8]>, SeriesId);
/// An accepted sample: series, time, value.
type Accepted = (SeriesId, i64, f64);

impl Storage {
    /// Starts an atomic write.
    pub fn appender(&self) -> StorageAppender {
        StorageAppender {
            store: self.clone(),
            samples: Vec::new(),
            meta: Vec::new(),
            new_series: HashMap::new(),
        }
    }
}

/// The [`Appender`] of [`Storage`].
pub struct StorageAppender {
    store: Storage,
    samples: Vec<(Arc<[u8]>, i64, f64)>,
    meta: Vec<(MetaBytes, Option<MetaBytes>)>,
    new_series: HashMap<Arc<[u8]>, Labels>,
}

impl StorageAppender {
    /// [`Appender::append`] for a caller that keeps each series' encoded labels
    /// (`enc` must be `labels.encode()`): no encoding or copy of the labels per sample.
    pub fn append_encoded(
        &mut self,
        enc: &Arc<[u8]>,
        labels: &Labels,
        t: i64,
        v: f64,
    ) -> Result<(), StorageError> {
        self.append_with(enc, || Ok(labels.clone()), t, v)
    }

    /// [`Self::append_encoded`] for a caller that keeps only the encoded labels (one
    /// allocation per series, which the head then shares): they are decoded only when the
    /// store does not have the series yet.
    pub fn append_shared(&mut self, enc: &Arc<[u8]>, t: i64, v: f64) -> Result<(), StorageError> {
        self.append_with(enc, || Labels::decode(enc), t, v)
    }

    fn append_with(
        &mut self,
        enc: &Arc<[u8]>,
        labels: impl FnOnce() -> Result<Labels, StorageError>,
        t: i64,
        v: f64,
    ) -> Result<(), StorageError> {
        // A series' samples usually come together (remote write): look it up once.
        let same_as_last = self
            .samples
            .last()
            .is_some_and(|(e, _, _)| Arc::ptr_eq(e, enc));
        if !same_as_last
            && !read_lock(&self.store.inner.head)
                .by_labels
                .contains_key(enc)
        {
            if let std::collections::hash_map::Entry::Vacant(e) = self.new_series.entry(enc.clone())
            {
                // A series the store has passed this check when it was created.
                let labels = labels()?;
                if labels.get("__name__").is_none() {
                    return Err(StorageError::InvalidLabels(
                        "series without __name__".into(),
                    ));
                }
                e.insert(labels);
            }
        }
        self.samples.push((enc.clone(), t, v));
        Ok(())
    }

    /// [`Appender::set_meta`] with a key or value that may share a label set with the
    /// caller: the pending ingest state keeps the share, not a copy.
    pub fn set_meta_bytes(&mut self, key: MetaBytes, value: MetaBytes) {
        self.meta.push((key, Some(value)));
    }

    /// Room for `n` more samples.
    pub fn reserve(&mut self, n: usize) {
        self.samples.reserve(n);
    }
}

impl Appender for StorageAppender {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<(), StorageError> {
        let enc: Arc<[u8]> = Arc::from(labels.encode());
        self.append_encoded(&enc, labels, t, v)
    }

    fn set_meta(&mut self, key: &[u8], value: &[u8]) {
        self.meta
            .push((MetaBytes::new(key), Some(MetaBytes::new(value))));
    }

    fn remove_meta(&mut self, key: &[u8]) {
        self.meta.push((MetaBytes::new(key), None));
    }

    fn commit(self) -> Result<CommitReport, StorageError> {
        let StorageAppender {
            store,
            samples,
            meta,
            new_series,
        } = self;
        let inner = &store.inner;
        let _w = inner.write.lock().unwrap_or_else(|e| e.into_inner());
        store.check_writable()?;
        let mut batch = Writes::default();
        let (ids, created) = assign_ids(&store, &samples, &new_series, &mut batch);
        let (accepted, report) = validate(&store, &samples, &ids)?;
        let seq = log(&store, meta, &created, &accepted)?;
        // Durable in the log; sled catches up on its own (the log is replayed after a crash).
        // A failure from here on leaves memory and disk apart: no more writes until reopened.
        if let Err(e) = batch
            .apply(&inner.main)
            .and_then(|()| apply(&store, created, &accepted, seq))
        {
            store.stop_writes(&e);
            return Err(e);
        }
        count(&inner.stats, &report, &accepted);
        Ok(report)
    }
}

/// Ids for the appended series the head does not know (another commit may have created
/// them meanwhile), with their sled entries queued in `batch`; returns every new series'
/// id and those created here.
fn assign_ids(
    store: &Storage,
    samples: &[(Arc<[u8]>, i64, f64)],
    new_series: &HashMap<Arc<[u8]>, Labels>,
    batch: &mut Writes,
) -> (HashMap<Arc<[u8]>, SeriesId>, Vec<Created>) {
    let inner = &store.inner;
    let mut ids: HashMap<Arc<[u8]>, SeriesId> = HashMap::new();
    let mut created: Vec<(Arc<[u8]>, SeriesId)> = Vec::new();
    let mut first_times: HashMap<&Arc<[u8]>, i64> = HashMap::new();
    if !new_series.is_empty() {
        for (enc, t, _) in samples {
            let e = first_times.entry(enc).or_insert(*t);
            *e = (*e).min(*t);
        }
    }
    let head = read_lock(&inner.head);
    for (enc, labels) in new_series {
        if let Some(id) = head.by_labels.get(enc) {
            ids.insert(enc.clone(), *id);
            continue;
        }
        let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
        let first_t = first_times.get(enc).copied().unwrap_or(0);
        series_keys(batch, id, labels, first_t);
        ids.insert(enc.clone(), id);
        created.push((enc.clone(), id));
    }
    (ids, created)
}

/// The samples that keep each series' time strictly increasing (against the head and
/// within this append), and what was refused.
fn validate(
    store: &Storage,
    samples: &[(Arc<[u8]>, i64, f64)],
    ids: &HashMap<Arc<[u8]>, SeriesId>,
) -> Result<(Vec<Accepted>, CommitReport), StorageError> {
    let inner = &store.inner;
    let mut report = CommitReport::default();
    let min_valid = inner.min_valid_t.load(Ordering::SeqCst) as i64;
    let mut accepted: Vec<(SeriesId, i64, f64)> = Vec::with_capacity(samples.len());
    let mut unknown_last: Vec<(SeriesId, i64, f64)> = Vec::new();
    {
        let head = read_lock(&inner.head);
        let mut last: HeadMap<SeriesId, (i64, u64)> = HeadMap::default();
        last.reserve(samples.len());
        let mut prev_series: Option<(&Arc<[u8]>, SeriesId)> = None;
        for (enc, t, v) in samples {
            let id = match prev_series {
                Some((p, id)) if Arc::ptr_eq(p, enc) => id,
                _ => match head.by_labels.get(enc).or_else(|| ids.get(enc)) {
                    Some(id) => *id,
                    None => return Err(corrupt("appended series has no id")),
                },
            };
            prev_series = Some((enc, id));
            let prev = last.get(&id).copied().or_else(|| {
                let s = head.series.get(&id)?;
                let lv = s
                    .head
                    .as_ref()
                    .and_then(|h| h.app.last())
                    .map(|(_, v)| v.to_bits());
                (s.maxt != i64::MIN).then_some((s.maxt, lv.unwrap_or(u64::MAX)))
            });
            if *t < min_valid {
                report.too_old += 1;
                continue;
            }
            match prev {
                Some((pt, _)) if *t < pt => report.out_of_order += 1,
                Some((pt, pv)) if *t == pt && pv == v.to_bits() => report.duplicates_ignored += 1,
                // The last value is not in memory (its chunk was cut, e.g. before a
                // restart): decided from the stored chunk below.
                Some((pt, u64::MAX)) if *t == pt => unknown_last.push((id, *t, *v)),
                Some((pt, _)) if *t == pt => report.duplicate_timestamp += 1,
                _ => {
                    last.insert(id, (*t, v.to_bits()));
                    accepted.push((id, *t, *v));
                }
            }
        }
    }
    // Resending exactly the last stored sample is a harmless retry, not a conflict.
    for (id, t, v) in unknown_last {
        let mut buf = Vec::new();
        for c in store.chunks_of(id, t, t)? {
            c.decode_into(&mut buf)
                .map_err(|e| StorageError::Corrupt(format!("series {id}: {e}")))?;
        }
        if buf
            .iter()
            .any(|&(bt, bv)| bt == t && bv.to_bits() == v.to_bits())
        {
            report.duplicates_ignored += 1;
        } else {
            report.duplicate_timestamp += 1;
        }
    }
    report.appended = accepted.len();
    Ok((accepted, report))
}

/// Appends the commit's record to the log and fsyncs it (the acknowledgement's
/// precondition, see `Storage::mark_durable`); its ingest-state writes become pending for
/// the next durable mark. Returns the record's sequence.
fn log(
    store: &Storage,
    meta: Vec<(MetaBytes, Option<MetaBytes>)>,
    created: &[(Arc<[u8]>, SeriesId)],
    accepted: &[(SeriesId, i64, f64)],
) -> Result<u64, StorageError> {
    let inner = &store.inner;
    let seq = inner.next_wal.fetch_add(1, Ordering::SeqCst);
    if !accepted.is_empty() || !created.is_empty() || !meta.is_empty() {
        let rec = wal::Record {
            seq,
            series: created
                .iter()
                .map(|(enc, id)| (*id, enc.to_vec()))
                .collect(),
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_vec(), v.as_ref().map(MetaBytes::to_vec)))
                .collect(),
            samples: accepted.to_vec(),
        };
        inner
            .wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&rec)?;
        inner.last_record.store(seq, Ordering::SeqCst);
        // Durable in the log: visible to reads now, into sled at the next durable mark.
        let mut pending = inner.meta_pending.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in meta {
            pending.insert(k, (seq, v));
        }
    }
    Ok(seq)
}

/// Makes a logged commit visible: new series and samples into the head, cut chunks staged
/// before the head lock is released, so a reader (which holds it across staging and the
/// head) never misses them.
fn apply(
    store: &Storage,
    created: Vec<(Arc<[u8]>, SeriesId)>,
    accepted: &[(SeriesId, i64, f64)],
    seq: u64,
) -> Result<(), StorageError> {
    let inner = &store.inner;
    let mut cut = Vec::new();
    let mut head = write_lock(&inner.head);
    for (enc, id) in created {
        // `append_to_head` below sets the first time.
        head.insert_series(id, enc, i64::MIN, i64::MIN);
    }
    for &(id, t, v) in accepted {
        if let Some(s) = head.series.get_mut(&id) {
            if let Some(c) = append_to_head(&inner.config, id, s, t, v, seq) {
                cut.push(c);
            }
        }
    }
    store.write_chunks(&mut head, cut);
    Ok(())
}

fn count(st: &StorageStats, report: &CommitReport, accepted: &[(SeriesId, i64, f64)]) {
    st.samples_appended
        .fetch_add(report.appended as u64, Ordering::Relaxed);
    if let Some(newest) = accepted.iter().map(|x| x.1).max() {
        st.newest_sample_ms.fetch_max(newest, Ordering::Relaxed);
    }
    st.samples_refused_out_of_order
        .fetch_add(report.out_of_order as u64, Ordering::Relaxed);
    st.samples_refused_duplicate_timestamp
        .fetch_add(report.duplicate_timestamp as u64, Ordering::Relaxed);
    st.samples_refused_too_old
        .fetch_add(report.too_old as u64, Ordering::Relaxed);
    if report.refused() > 0 {
        tracing::debug!(?report, "samples refused");
    }
}
