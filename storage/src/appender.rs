//! The [`Appender`] of [`Storage`]: validate against the head (and the commits in the
//! pipeline, see `pipeline`), append one record to the log and fsync it, then apply to the
//! head and stage the chunks it cut (see `Storage::mark_durable` for what is durable when).

use crate::db::{
    corrupt, read_lock, series_keys, write_lock, CommitReport, Storage, StorageStats, Writes,
};
use crate::head::{append_run_to_head, CutChunk, HeadMap};
use crate::pipeline::InFlight;
use crate::{wal, Appender, Labels, MetaBytes, SeriesId, StorageError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A series created by a commit: encoded labels and id.
type Created = (Arc<[u8]>, SeriesId);
/// An accepted sample: series, time, value.
type Accepted = (SeriesId, i64, f64);
/// Runs of one series in the accepted samples: the series' slot hint and the run's end.
type AcceptedRuns = Vec<(u32, usize)>;
/// Each series' last accepted time and value bits in one commit.
type LastAccepted = HeadMap<SeriesId, (i64, u64)>;
/// Ingest-state writes: key, value (`None`: removed).
type MetaWrites = Vec<(MetaBytes, Option<MetaBytes>)>;

impl Storage {
    /// Starts an atomic write.
    pub fn appender(&self) -> StorageAppender {
        StorageAppender {
            removed: self.inner.series_removed.load(Ordering::SeqCst),
            store: self.clone(),
            runs: Vec::new(),
            samples: Vec::new(),
            meta: Vec::new(),
            new_series: HashMap::new(),
            unresolved: false,
        }
    }
}

/// No slot hint.
const NO_SLOT: u32 = u32::MAX;

/// Consecutive appended samples of one series (remote write sends a series' samples
/// together), so that the series is looked up once per run, not per sample.
struct Run {
    enc: Arc<[u8]>,
    /// The head's id of the series when it was appended (`None`: new to the head then).
    id: Option<SeriesId>,
    /// Its slot in the head's table then (`NO_SLOT`: none): a hint that spares a lookup
    /// by id in the serial stages (see `SeriesTable::get_hinted`).
    slot: u32,
    /// End of the run's samples in `StorageAppender::samples`.
    end: usize,
}

/// The [`Appender`] of [`Storage`].
pub struct StorageAppender {
    store: Storage,
    /// `Inner::series_removed` before the ids in `runs` were looked up: while it is
    /// unchanged they are still the head's.
    removed: u64,
    /// Consecutive samples of one series.
    runs: Vec<Run>,
    /// (time, value) of every run, in order.
    samples: Vec<(i64, f64)>,
    meta: MetaWrites,
    new_series: HashMap<Arc<[u8]>, Labels>,
    /// Some runs were appended without looking their series up (`append_shared`).
    unresolved: bool,
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
    /// store does not have the series yet. The series is looked up at commit, with every
    /// other series appended so, under one read lock of the head (a lock taken per sample
    /// waits each time a commit applies).
    pub fn append_shared(&mut self, enc: &Arc<[u8]>, t: i64, v: f64) -> Result<(), StorageError> {
        let same_as_last = self.runs.last().is_some_and(|r| Arc::ptr_eq(&r.enc, enc));
        if !same_as_last {
            self.unresolved = true;
            self.runs.push(Run {
                enc: enc.clone(),
                id: None,
                slot: NO_SLOT,
                end: 0,
            });
        }
        self.samples.push((t, v));
        self.runs.last_mut().expect("pushed above").end = self.samples.len();
        Ok(())
    }

    fn append_with(
        &mut self,
        enc: &Arc<[u8]>,
        labels: impl FnOnce() -> Result<Labels, StorageError>,
        t: i64,
        v: f64,
    ) -> Result<(), StorageError> {
        let same_as_last = self.runs.last().is_some_and(|r| Arc::ptr_eq(&r.enc, enc));
        if !same_as_last {
            let found = read_lock(&self.store.inner.head)
                .series
                .find(enc)
                .map(|(m, slot)| (m.id, slot));
            let (id, slot) = (found.map(|f| f.0), found.map_or(NO_SLOT, |f| f.1));
            if id.is_none() {
                if let std::collections::hash_map::Entry::Vacant(e) =
                    self.new_series.entry(enc.clone())
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
            self.runs.push(Run {
                enc: enc.clone(),
                id,
                slot,
                end: 0,
            });
        }
        self.samples.push((t, v));
        self.runs.last_mut().expect("pushed above").end = self.samples.len();
        Ok(())
    }

    /// Looks up the series of the runs appended by [`Self::append_shared`], under one read
    /// lock of the head, and decodes and checks the labels of those new to the store.
    fn resolve(&mut self) -> Result<(), StorageError> {
        if !std::mem::take(&mut self.unresolved) {
            return Ok(());
        }
        let store = self.store.clone();
        let head = read_lock(&store.inner.head);
        for run in &mut self.runs {
            if run.id.is_some() || self.new_series.contains_key(&run.enc) {
                continue;
            }
            if let Some((m, slot)) = head.series.find(&run.enc) {
                run.id = Some(m.id);
                run.slot = slot;
            } else {
                self.new_series
                    .insert(run.enc.clone(), new_labels(&run.enc)?);
            }
        }
        Ok(())
    }

    /// Appends `samples` (time order) of one series given by its label set in the store's
    /// encoding (`enc` as [`Labels::encode`] makes it), which the caller has checked as
    /// [`Labels::new`] checks labels (`check_sorted_names`, no empty value). A series the
    /// head has is looked up by these bytes and shares the head's copy; only a series new
    /// to the store is copied and decoded (its name is checked then).
    pub fn append_run(&mut self, enc: &[u8], samples: &[(i64, f64)]) -> Result<(), StorageError> {
        self.append_runs(std::iter::once((enc, samples)))
    }

    /// [`Self::append_run`] for many series, looked up under one read lock of the head (a
    /// lock taken per series waits each time a commit applies).
    pub fn append_runs<'a>(
        &mut self,
        runs: impl IntoIterator<Item = (&'a [u8], &'a [(i64, f64)])>,
    ) -> Result<(), StorageError> {
        let store = self.store.clone();
        let head = read_lock(&store.inner.head);
        for (enc, samples) in runs {
            if samples.is_empty() {
                continue;
            }
            let known = head
                .series
                .find(enc)
                .map(|(m, slot)| (m.labels.clone(), m.id, slot));
            let (enc, id, slot) = match known {
                Some((k, id, slot)) => (k, Some(id), slot),
                None => match self.new_series.get_key_value(enc) {
                    Some((k, _)) => (k.clone(), None, NO_SLOT),
                    None => {
                        let k: Arc<[u8]> = Arc::from(enc);
                        self.new_series.insert(k.clone(), new_labels(enc)?);
                        (k, None, NO_SLOT)
                    }
                },
            };
            self.samples.extend_from_slice(samples);
            self.runs.push(Run {
                enc,
                id,
                slot,
                end: self.samples.len(),
            });
        }
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
        self.runs.reserve(n / 4);
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
        let mut out = None;
        self.commit_then(|r| out = Some(r));
        out.unwrap_or_else(|| Err(StorageError::Aborted("a commit was abandoned".into())))
    }
}

impl StorageAppender {
    /// [`Appender::commit`], handing its outcome to `decided` as soon as it is known: when
    /// the commit is durable (its ingest state readable), or failed. The commit is then
    /// applied to the head and the chunks it cut are staged (in order with the other
    /// commits, before this returns), so a server can answer its client from `decided`
    /// while this thread applies and stages: a read started after `decided` waits for the
    /// apply (`Pipeline::settle`), and staging is not what makes samples durable (the log
    /// is) nor visible (the head keeps them readable until staged). `decided` must not read
    /// samples or series from the store: such a read waits for this very commit's apply.
    pub fn commit_then(mut self, decided: impl FnOnce(Result<CommitReport, StorageError>)) {
        if let Err(e) = self.resolve() {
            return decided(Err(e));
        }
        self.commit_resolved(decided)
    }

    fn commit_resolved(self, decided: impl FnOnce(Result<CommitReport, StorageError>)) {
        let StorageAppender {
            store,
            removed,
            runs,
            samples,
            meta,
            new_series,
            ..
        } = self;
        let inner = &store.inner;
        // Validation, serial: ids, and time per series against the head and against the
        // commits still in the pipeline (see `pipeline`).
        let (turn, batch, created, accepted, accepted_runs, report) = {
            let mut w = inner.write.lock().unwrap_or_else(|e| e.into_inner());
            let next = inner.next_wal.load(Ordering::SeqCst);
            if inner.pipeline.failed() {
                inner.pipeline.drain(next);
                w.clear();
            } else {
                w.prune(inner.pipeline.applied_before(), next);
            }
            if let Err(e) = store.check_writable() {
                return decided(Err(e));
            }
            let mut batch = Writes::default();
            let (ids, created) = assign_ids(&store, &w, &runs, &samples, &new_series, &mut batch);
            // Ids looked up when appended are still the head's unless series were removed
            // since (retention, under the write lock).
            let ids_current = inner.series_removed.load(Ordering::SeqCst) == removed;
            let appended = Appended {
                runs: &runs,
                samples: &samples,
                ids_current,
            };
            let (accepted, accepted_runs, last, report) =
                match validate(&store, &w, &appended, &ids) {
                    Ok(v) => v,
                    Err(e) => return decided(Err(e)),
                };
            let seq = inner.next_wal.fetch_add(1, Ordering::SeqCst);
            // From here on the commit holds a turn in each of the pipeline's stages.
            let turn = inner.pipeline.turn(seq);
            for (id, (t, bits)) in last {
                w.last.insert(id, (t, bits, seq));
            }
            for (enc, id) in &created {
                w.created.insert(enc.clone(), (*id, seq));
            }
            (turn, batch, created, accepted, accepted_runs, report)
        };
        let seq = turn.seq();
        let (frame, meta) = log_frame(seq, &created, meta, &accepted);
        let logged = frame.is_some();
        turn.run(
            &inner.wal,
            frame,
            || {
                if logged {
                    inner.last_record.fetch_max(seq, Ordering::SeqCst);
                    // Durable in the log: visible to reads now, into sled at the next durable
                    // mark. Commits made durable by one fsync get here in any order; the
                    // map keeps each key's newest.
                    let mut pending = inner.meta_pending.lock().unwrap_or_else(|e| e.into_inner());
                    for (k, v) in meta {
                        pending.insert(k, (seq, v));
                    }
                }
                count(&inner.stats, &report, &accepted);
                report
            },
            || {
                // New series' postings and entries wait for the next durable mark (the log
                // has them; a crash replays them). A failure from here on leaves memory and
                // disk apart: no more writes until reopened.
                let Writes {
                    postings, series, ..
                } = batch;
                write_lock(&inner.index_pending).absorb(postings, series, seq);
                let cut = match apply(&store, created, &accepted, &accepted_runs, seq) {
                    Ok(cut) => cut,
                    Err(e) => {
                        store.stop_writes(&e);
                        return Err(e);
                    }
                };
                Ok(cut)
            },
            decided,
            // Cut chunks are encoded for staging outside the head's lock (in parallel with
            // the next commit's apply), then staged in order.
            |cut| {
                cut.map(|cut| {
                    crate::staging::encode_for_staging(&cut)
                        .into_iter()
                        .collect::<HashMap<_, _>>()
                })
            },
            |encoded| {
                if let Some(mut encoded) = encoded {
                    let mut head = write_lock(&inner.head);
                    store.stage_unstaged(&mut head, seq, &mut encoded);
                }
            },
        )
    }
}

/// The labels of a series new to the store, decoded from its encoding and checked (a
/// series the store has passed this check when it was created).
fn new_labels(enc: &[u8]) -> Result<Labels, StorageError> {
    let labels = Labels::decode(enc)?;
    if labels.get("__name__").is_none() {
        return Err(StorageError::InvalidLabels(
            "series without __name__".into(),
        ));
    }
    Ok(labels)
}

/// Ids for the appended series the head does not know (a commit applied or still in the
/// pipeline may have created them meanwhile), with their sled entries queued in `batch`;
/// returns every new series' id and those created here.
fn assign_ids(
    store: &Storage,
    in_flight: &InFlight,
    runs: &[Run],
    samples: &[(i64, f64)],
    new_series: &HashMap<Arc<[u8]>, Labels>,
    batch: &mut Writes,
) -> (HashMap<Arc<[u8]>, SeriesId>, Vec<Created>) {
    let inner = &store.inner;
    let mut ids: HashMap<Arc<[u8]>, SeriesId> = HashMap::new();
    let mut created: Vec<(Arc<[u8]>, SeriesId)> = Vec::new();
    let mut first_times: HashMap<&Arc<[u8]>, i64> = HashMap::new();
    if !new_series.is_empty() {
        let mut start = 0;
        for r in runs {
            if r.id.is_none() {
                if let Some(t) = samples[start..r.end].iter().map(|s| s.0).min() {
                    let e = first_times.entry(&r.enc).or_insert(t);
                    *e = (*e).min(t);
                }
            }
            start = r.end;
        }
    }
    let head = read_lock(&inner.head);
    for (enc, labels) in new_series {
        let known = head
            .series
            .id_of(enc)
            .or_else(|| in_flight.created.get(enc).map(|(id, _)| *id));
        if let Some(id) = known {
            ids.insert(enc.clone(), id);
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

/// An appender's samples as validation reads them.
struct Appended<'a> {
    runs: &'a [Run],
    samples: &'a [(i64, f64)],
    /// The runs' ids are still the head's (no series was removed since they were looked up).
    ids_current: bool,
}

/// The samples that keep each series' time strictly increasing (against the head, the
/// commits in the pipeline and within this append), the last accepted (time, value bits)
/// of each series, and what was refused.
fn validate(
    store: &Storage,
    in_flight: &InFlight,
    appended: &Appended,
    ids: &HashMap<Arc<[u8]>, SeriesId>,
) -> Result<(Vec<Accepted>, AcceptedRuns, LastAccepted, CommitReport), StorageError> {
    let inner = &store.inner;
    let mut report = CommitReport::default();
    let min_valid = inner.min_valid_t.load(Ordering::SeqCst) as i64;
    let mut accepted: Vec<(SeriesId, i64, f64)> = Vec::with_capacity(appended.samples.len());
    let mut unknown_last: Vec<(SeriesId, i64, f64)> = Vec::new();
    let mut last = LastAccepted::default();
    last.reserve(appended.runs.len());
    let mut runs = AcceptedRuns::with_capacity(appended.runs.len());
    let head = read_lock(&inner.head);
    let mut start = 0;
    for run in appended.runs {
        let samples = &appended.samples[start..run.end];
        start = run.end;
        let (id, slot) = match run.id.filter(|_| appended.ids_current) {
            Some(id) => (id, run.slot),
            None => match head
                .series
                .id_of(&run.enc)
                .or_else(|| ids.get(&run.enc).copied())
            {
                Some(id) => (id, NO_SLOT),
                None => return Err(corrupt("appended series has no id")),
            },
        };
        // The series' last (time, value bits): this commit's, then the pipeline's, then
        // the head's (`u64::MAX`: the value is not in memory).
        let mut prev = last
            .get(&id)
            .copied()
            .or_else(|| in_flight.last.get(&id).map(|&(t, bits, _)| (t, bits)))
            .or_else(|| {
                // No commit in the pipeline has the series, so none is appending to it.
                let s = head.series.get_hinted(id, slot)?.open();
                let lv = s
                    .head
                    .as_ref()
                    .and_then(|h| h.app.last())
                    .map(|(_, v)| v.to_bits());
                (s.maxt != i64::MIN).then_some((s.maxt, lv.unwrap_or(u64::MAX)))
            });
        let mut took = false;
        for &(t, v) in samples {
            if t < min_valid {
                report.too_old += 1;
                continue;
            }
            match prev {
                Some((pt, _)) if t < pt => report.out_of_order += 1,
                Some((pt, pv)) if t == pt && pv == v.to_bits() => report.duplicates_ignored += 1,
                // The last value is not in memory (its chunk was cut, e.g. before a
                // restart): decided from the stored chunk below.
                Some((pt, u64::MAX)) if t == pt => unknown_last.push((id, t, v)),
                Some((pt, _)) if t == pt => report.duplicate_timestamp += 1,
                _ => {
                    prev = Some((t, v.to_bits()));
                    took = true;
                    accepted.push((id, t, v));
                }
            }
        }
        if let (true, Some(p)) = (took, prev) {
            last.insert(id, p);
            runs.push((slot, accepted.len()));
        }
    }
    drop(head);
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
    Ok((accepted, runs, last, report))
}

/// The commit's log frame (`None`: it changes nothing the log keeps), built outside the
/// write lock from the commit's own label sets, ingest state and samples (no copies), and
/// its ingest-state writes given back.
fn log_frame(
    seq: u64,
    created: &[Created],
    meta: MetaWrites,
    accepted: &[Accepted],
) -> (Option<Vec<u8>>, MetaWrites) {
    if accepted.is_empty() && created.is_empty() && meta.is_empty() {
        return (None, meta);
    }
    let series: Vec<(SeriesId, Arc<[u8]>)> =
        created.iter().map(|(enc, id)| (*id, enc.clone())).collect();
    let rec = wal::RecordRef {
        seq,
        series: &series,
        meta: &meta,
        samples: accepted,
    };
    let frame = wal::frame(&rec.encode());
    (Some(frame), meta)
}

/// Makes a logged commit visible: new series and samples into the head. Cut chunks stay
/// readable in the head (`Head::unstaged`) until the commit's staging turn; returns a copy
/// of them to encode for staging meanwhile, `None` when nothing waits to be staged.
///
/// Only new series take the head's write lock; the samples go in under its read lock and
/// each series' own lock (`MemSeries::open`), so the handlers' lookups, the validation of
/// the next commits and queries are not held up meanwhile. Nothing else changes these
/// series now: commits apply one at a time, and maintenance takes the head's write lock.
fn apply(
    store: &Storage,
    created: Vec<(Arc<[u8]>, SeriesId)>,
    accepted: &[(SeriesId, i64, f64)],
    runs: &AcceptedRuns,
    seq: u64,
) -> Result<Option<Vec<CutChunk>>, StorageError> {
    let inner = &store.inner;
    let mut cut = Vec::new();
    if !created.is_empty() {
        let mut head = write_lock(&inner.head);
        for (enc, id) in created {
            // `append_run_to_head` below sets the first time.
            head.insert_series(id, enc, i64::MIN, i64::MIN);
        }
    }
    // Removing series (retention) waits for an empty pipeline: those created above stay.
    let head = read_lock(&inner.head);
    // Accepted samples come in runs of one series: one lookup per run, through the slot
    // the series had when it was appended.
    let mut start = 0;
    for &(slot, end) in runs {
        let run = &accepted[start..end];
        start = end;
        let id = run[0].0;
        if let Some(s) = head.series.get_hinted(id, slot) {
            let mut open = s.open();
            let samples = run.iter().map(|&(_, t, v)| (t, v));
            let before = cut.len();
            append_run_to_head(&inner.config, id, &mut open, samples, seq, &mut cut);
            // Readable in `unstaged` before the series' lock is released.
            if cut.len() > before {
                head.queue_cut(cut[before..].iter().cloned(), seq);
            }
        }
    }
    if cut.is_empty() && head.unstaged().is_empty() {
        return Ok(None);
    }
    Ok(Some(cut))
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
