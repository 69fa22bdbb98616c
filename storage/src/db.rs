//! The engine: the write-ahead log (`wal/`), series, postings and ingest state in one sled
//! database (`main/`), cut chunks in one append-only staging file per chunk window
//! (`staging/<window>-<gen>.kps`, see `staging`) and compacted windows in one directory
//! per time block (`blocks/<start>/`, see `compact`), so that compaction and retention free
//! disk by removing whole files and directories.
//!
//! Writes: an append is validated against the in-memory head (strictly increasing time per
//! series); then one log record with its new series, ingest-state changes and accepted
//! samples is appended and fsynced; then new series and postings go to sled (unflushed: the
//! log is the source of truth), ingest state to memory until the next durable mark, and the
//! samples to the series' open head chunks. A head chunk is
//! cut into its window's staging file when it holds 120 samples or the next sample falls
//! in another chunk window (`chunk_span`); [`Storage::maintain`] cuts idle head chunks,
//! makes the cut chunks durable and marks them so ([`Storage::mark_durable`], the one
//! place that states the durability order), deletes the log segments that are no longer
//! needed and compacts the windows that are over.
//!
//! Recovery: on open, staged chunks past their series' durable mark are discarded, then
//! the log is replayed: series and ingest state into sled again (idempotent), samples after
//! the mark into the head.

use crate::head::{append_to_head, Head, MemSeries};
use crate::index::SeriesOp;
use crate::labels::Labels;
use crate::meta_bytes::MetaBytes;
use crate::pending::PendingMap;
use crate::pipeline::{InFlight, Pipeline};
use crate::staging::{open_staging, Windows};
use crate::{keys, wal, SeriesId, StorageError};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Store settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// sled page cache of the main database, bytes.
    pub cache_capacity_bytes: u64,
    /// Samples older than this are deleted (whole blocks at a time), ms.
    pub retention_ms: i64,
    /// When the data directory is larger than this, the oldest blocks are deleted.
    pub retention_bytes: Option<u64>,
    /// Time span of one block (a day directory of window files), ms; a multiple of
    /// `chunk_span_ms`.
    pub block_duration_ms: i64,
    /// Chunks never span a boundary of this aligned window, ms.
    pub chunk_span_ms: i64,
    /// Head chunks with no sample for this long are cut into their block by `maintain`, ms.
    pub head_idle_ms: i64,
    /// Size at which the write-ahead log starts a new segment file. The log is truncated a
    /// whole segment at a time (64 MiB kept most of an hour of 20,000 series; 16 MiB let
    /// `maintain` free samples already in cut chunks), and a busy log holds up to one and
    /// a half segments of preallocated zeros: 4 MiB (since 2026-12-03) took the hostile
    /// footprint before maintenance from 20.35 to 18.82 bytes per sample, throughput
    /// unchanged (docs/BENCHMARKS.md).
    pub wal_segment_bytes: u64,
    /// Write-ahead log segments are zero-filled ahead of use by a background thread, so
    /// that each commit's fsync overwrites blocks instead of growing the file (see
    /// `wal`'s module doc). The next segment is prepared once the current one is half
    /// written: up to two segments of disk beyond the log's frames, none for a small log.
    pub wal_preallocate: bool,
    /// Most bytes of write-ahead log kept for readers that hold it (remote write
    /// destinations behind); past it the oldest held segments go and the samples in them
    /// are counted as dropped for each reader.
    pub wal_hold_max_bytes: u64,
    /// Pages of a compacted window file are cut at about this size (a read of one series
    /// reads and checks one page).
    pub page_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity_bytes: 8 << 20,
            retention_ms: 15 * 24 * 3600 * 1000,
            retention_bytes: None,
            block_duration_ms: 24 * 3600 * 1000,
            chunk_span_ms: 3600 * 1000,
            head_idle_ms: 15 * 60 * 1000,
            wal_segment_bytes: 4 << 20,
            wal_preallocate: true,
            wal_hold_max_bytes: 1 << 30,
            page_bytes: 16 << 10,
        }
    }
}

/// What a commit did with its samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitReport {
    pub appended: usize,
    /// Same timestamp and same value as the last sample: ignored (idempotent).
    pub duplicates_ignored: usize,
    /// Refused: older than the series' last sample.
    pub out_of_order: usize,
    /// Refused: same timestamp as the last sample but another value.
    pub duplicate_timestamp: usize,
    /// Refused: older than what retention keeps.
    pub too_old: usize,
}

impl CommitReport {
    pub fn refused(&self) -> usize {
        self.out_of_order + self.duplicate_timestamp + self.too_old
    }
}

/// Cumulative counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct StorageStats {
    pub samples_appended: AtomicU64,
    pub samples_refused_out_of_order: AtomicU64,
    pub samples_refused_duplicate_timestamp: AtomicU64,
    pub samples_refused_too_old: AtomicU64,
    pub chunks_cut: AtomicU64,
    pub windows_compacted: AtomicU64,
    /// Newest sample time in the store (ms); 0 while it is empty.
    pub newest_sample_ms: std::sync::atomic::AtomicI64,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
}

/// The store's shared state. Every lock, in the order they may be nested (take a later one
/// while holding an earlier one, never the reverse):
///
/// 1. `maintenance`: one maintenance at a time (it releases `write` while compaction writes
///    pages).
/// 2. `write`: serializes the validation of commits (with the state of the commits still
///    in the pipeline, `pipeline::InFlight`) and the steps of maintenance that change what
///    commits see; those take it with [`Storage::lock_write`], which waits until the
///    pipeline is empty. [`Storage::mark_durable`] runs under it.
/// 3. `head`: series and head chunks. A chunk cut from the head stays in the head
///    (`Head::unstaged`) until it is staged, which happens under `head`, and readers hold it
///    across staging and the head (`querier`). The commit pipeline's apply stage holds only
///    its read lock (its write lock briefly for new series) and, per series, the series'
///    own lock (`MemSeries::open`), then `Head::unstaged`'s: readers under the read lock
///    take them in that order too.
/// 4. `windows`: which windows are staged and which compacted, with their databases and
///    files (one lock, so a reader sees a generation in exactly one of them).
/// 5. `wal`, `holds`, `meta_pending`, `index_pending` and the pipeline's stages: leaves,
///    never held while taking another (`index_pending` is read under `head` by
///    `label_values`, and written to sled under its read lock by `mark_durable`).
pub(crate) struct Inner {
    pub dir: PathBuf,
    pub config: StorageConfig,
    pub main: sled::Db,
    /// Staged and compacted chunk windows.
    pub windows: RwLock<Windows>,
    /// Serializes maintenance (which releases the write lock while it compacts).
    pub maintenance: Mutex<()>,
    pub head: RwLock<Head>,
    /// Serializes the validation of commits and maintenance.
    pub write: Mutex<InFlight>,
    /// The ordered stages of commits after validation (log write, fsync, apply).
    pub pipeline: Pipeline,
    pub next_id: AtomicU64,
    /// Raised whenever series are removed from the head (retention), so an appender knows
    /// whether the ids it looked up are still valid.
    pub series_removed: AtomicU64,
    pub next_wal: AtomicU64,
    /// Sequence of the newest record in the log (commits that change nothing write none).
    pub last_record: AtomicU64,
    pub wal: Mutex<wal::Wal>,
    /// Samples before this are refused (their blocks were deleted).
    pub min_valid_t: AtomicU64,
    pub stats: StorageStats,
    /// Log readers by name: the first sequence each still needs, and the samples dropped
    /// for it when the log held for it grew past `wal_hold_max_bytes`.
    pub holds: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Set by [`Storage::stop_writes`]: why the store takes no more writes.
    pub stopped: Mutex<Option<String>>,
    /// Ingest-state changes not yet in sled, newest per key: the sequence of the log
    /// record that carries it and the value (`None`: removed). Sled gets an entry only when
    /// the log is about to lose its record (`mark_durable`), so a counter total that
    /// changes every push is never written to sled while it keeps changing. Reads look here
    /// before sled.
    /// Keys and values may share a label set with their writer ([`MetaBytes`]); ordered
    /// by key for prefix scans ([`PendingMap`]).
    pub meta_pending: Mutex<PendingMap>,
    /// Postings and series entries of commits, not yet in sled (see
    /// [`crate::index::IndexPending`]): a commit's log record makes them durable, and
    /// `mark_durable` writes them for all commits at once, instead of each commit reading
    /// and rewriting every posting list it touches.
    pub index_pending: RwLock<crate::index::IndexPending>,
}

/// What the replay of the log has done so far (`Storage::replay_record`).
#[derive(Default)]
struct Replay {
    records: usize,
    samples: usize,
    last_seq: u64,
    /// Chunks cut by replayed samples, not yet staged.
    cut: Vec<crate::head::CutChunk>,
    /// Sled entries of the series the log created.
    batch: Writes,
}

/// Cut chunks the replay stages at once.
const REPLAY_CUT_BATCH: usize = 16_384;

pub(crate) fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.into())
}

impl Storage {
    /// Opens (or creates) the store in `dir`, replaying the write-ahead records.
    pub fn open(dir: &Path, config: &StorageConfig) -> Result<Self, StorageError> {
        if config.chunk_span_ms <= 0 || config.block_duration_ms % config.chunk_span_ms != 0 {
            return Err(StorageError::Config(
                "block duration must be a positive multiple of the chunk span".into(),
            ));
        }
        std::fs::create_dir_all(dir.join("blocks"))
            .map_err(|e| StorageError::Io(dir.join("blocks"), e))?;
        let main = open_retrying(
            sled::Config::new()
                .path(dir.join("main"))
                .cache_capacity(config.cache_capacity_bytes)
                .use_compression(true)
                // zstd level 1 instead of sled's 5 (only the writer's level: stores written
                // at either level read the same).
                .compression_factor(1),
        )?;
        if main.scan_prefix([keys::LABELS_BY_ID]).next().is_some() {
            return Err(StorageError::Config(format!(
                "{} holds data in the first storage layout, which this version does not read; \
                 move it away and start with an empty data directory",
                dir.display()
            )));
        }
        let files = crate::blocks::load(dir)?;
        // Series: `S group` values (first time, newest compacted time); label sets are
        // rebuilt from the postings (keeping them only there saves sled memory per series).
        let mut pairs: HashMap<SeriesId, Vec<(String, String)>> = HashMap::new();
        for kv in main.scan_prefix([keys::POSTING]) {
            let (k, v) = kv?;
            let (name, value) = keys::split_posting(&k).ok_or_else(|| corrupt("posting key"))?;
            let ids = crate::index::decode(&v)?;
            for id in ids {
                pairs
                    .entry(id)
                    .or_default()
                    .push((name.to_owned(), value.to_owned()));
            }
        }
        let mut head = Head::default();
        let mut max_id = 0;
        let mut stale = crate::index::SeriesDelta::default();
        for kv in main.scan_prefix([keys::SERIES_GROUP]) {
            let (k, v) = kv?;
            let group = keys::be_u64(&k[1..]).ok_or_else(|| corrupt("series group key"))?;
            for (id, e) in crate::index::decode_group(group, &v)? {
                max_id = max_id.max(id);
                let Some(p) = pairs.remove(&id) else {
                    // Not left by this version (postings go first when a series is
                    // created, last when it is removed); kept for directories written by
                    // one whose retention removed postings first.
                    tracing::warn!(
                        series = id,
                        "series without postings (its removal was interrupted); removing it"
                    );
                    stale.push(id, SeriesOp::Remove);
                    continue;
                };
                let labels: Arc<[u8]> = Arc::from(Labels::new(p)?.encode());
                head.insert_series(id, labels, e.first_t, e.persisted_maxt);
            }
        }
        stale.apply(&main)?;
        let staging = open_staging(dir, &files, &head)?;
        // Postings of ids without a series entry: retention stopped between removing the
        // entry and the postings. (A series being created writes postings first; its log
        // record, replayed below, writes them again.)
        if !pairs.is_empty() {
            tracing::warn!(
                ids = pairs.len(),
                "removing postings of series that no longer exist (an interrupted retention)"
            );
            let mut leftover = crate::index::PostingsDelta::default();
            for (id, labels) in &pairs {
                for (name, value) in labels {
                    leftover.remove(name, value, *id);
                }
            }
            leftover.apply(&main)?;
        }
        let inner = Inner {
            // Replaced by the log once it is replayed, below.
            wal: Mutex::new(wal::Wal::unopened(&dir.join("wal"))),
            dir: dir.to_owned(),
            config: config.clone(),
            main,
            windows: RwLock::new(Windows { staging, files }),
            maintenance: Mutex::new(()),
            head: RwLock::new(head),
            write: Mutex::new(InFlight::default()),
            pipeline: Pipeline::new(),
            next_id: AtomicU64::new(max_id + 1),
            series_removed: AtomicU64::new(0),
            next_wal: AtomicU64::new(1),
            last_record: AtomicU64::new(0),
            min_valid_t: AtomicU64::new(i64::MIN as u64),
            stats: StorageStats::default(),
            holds: Mutex::new(BTreeMap::new()),
            stopped: Mutex::new(None),
            meta_pending: Mutex::new(PendingMap::default()),
            index_pending: RwLock::new(crate::index::IndexPending::default()),
        };
        let store = Storage {
            inner: Arc::new(inner),
        };
        let mut replay = Replay::default();
        {
            let mut head = write_lock(&store.inner.head);
            let wal = wal::Wal::open_each(
                &dir.join("wal"),
                config.wal_segment_bytes,
                config.wal_preallocate,
                |rec| store.replay_record(&mut head, &mut replay, rec),
            )?;
            *store.inner.wal.lock().unwrap_or_else(|e| e.into_inner()) = wal;
        }
        let (records, samples) = store.finish_replay(replay)?;
        let compacted = read_lock(&store.inner.windows).files.len();
        let staged_n = read_lock(&store.inner.windows).staging.len();
        tracing::info!(dir = %dir.display(), series = store.series_count(), compacted_windows = compacted,
            staged_windows = staged_n,
            wal_records = records, wal_samples = samples, "opened store");
        Ok(store)
    }

    /// Applies one record still in the write-ahead log (the log hands them over in order,
    /// one segment decoded at a time): series to sled (idempotent, at the end), ingest
    /// state to `meta_pending` with the sequence of its record (the log keeps it until
    /// `mark_durable` writes it), samples to the head unless a block already has them.
    fn replay_record(
        &self,
        head: &mut Head,
        r: &mut Replay,
        rec: wal::Record,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        r.records += 1;
        r.last_seq = rec.seq;
        let mut first_times: HashMap<SeriesId, i64> = HashMap::new();
        if !rec.series.is_empty() {
            for &(id, t, _) in &rec.samples {
                first_times.entry(id).or_insert(t);
            }
        }
        for (id, enc) in rec.series {
            if head.series.contains_key(id) {
                continue;
            }
            let labels = Labels::decode(&enc)?;
            let first_t = first_times.get(&id).copied().unwrap_or(i64::MIN);
            series_keys(&mut r.batch, id, &labels, first_t);
            head.insert_series(id, Arc::from(enc), first_t, i64::MIN);
            inner.next_id.fetch_max(id + 1, Ordering::SeqCst);
        }
        // Ingest state stays pending, carried by its record as before the stop (the
        // newest record wins); `mark_durable` writes it before the log may lose it.
        let mut pending = self.pending_meta();
        for (k, v) in rec.meta {
            pending.insert(k.into(), (rec.seq, v.map(MetaBytes::from)));
        }
        drop(pending);
        for (id, t, v) in rec.samples {
            let Some(s) = head.series.get_mut(id).map(MemSeries::open_mut) else {
                continue;
            };
            if t <= s.maxt {
                continue; // already in a block, or replayed
            }
            if let Some(c) = append_to_head(&inner.config, id, s, t, v, rec.seq) {
                r.cut.push(c);
            }
            r.samples += 1;
        }
        // Cut chunks go to staging as they pile up, not all at the end (memory).
        if r.cut.len() >= REPLAY_CUT_BATCH {
            self.write_chunks(head, std::mem::take(&mut r.cut));
        }
        Ok(())
    }

    /// After the last record: series to sled, the sequences, the chunks still cut.
    /// Returns how many records and samples were replayed.
    fn finish_replay(&self, r: Replay) -> Result<(usize, usize), StorageError> {
        let inner = &self.inner;
        let Replay {
            records,
            samples,
            last_seq,
            cut,
            batch,
        } = r;
        batch.apply(&inner.main)?;
        // A segment whose only record was torn off still names a sequence that was handed
        // out; never hand it out again (log readers keep positions by sequence).
        let newest_segment = wal::segments(&inner.dir.join("wal"))?
            .last()
            .map_or(0, |s| s.0);
        let next = last_seq.max(newest_segment) + 1;
        inner.next_wal.store(next, Ordering::SeqCst);
        inner.pipeline.reset(next);
        inner.last_record.store(last_seq, Ordering::SeqCst);
        let newest = read_lock(&inner.head)
            .series
            .values()
            .map(|s| s.open().maxt)
            .max()
            .unwrap_or(0);
        inner
            .stats
            .newest_sample_ms
            .store(newest.max(0), Ordering::Relaxed);
        self.write_chunks(&mut write_lock(&inner.head), cut);
        Ok((records, samples))
    }

    /// Reads an ingest-state value written with [`crate::Appender::set_meta`].
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some((_, v)) = self.pending_meta().get(key) {
            return Ok(v.as_ref().map(MetaBytes::to_vec));
        }
        Ok(self.inner.main.get(keys::meta(key))?.map(|v| v.to_vec()))
    }

    /// The sequence of the oldest log record that carries pending ingest state or index
    /// entries not in sled yet: the log must keep it and every record after it
    /// (`u64::MAX`: none pending).
    pub(crate) fn oldest_pending_seq(&self) -> u64 {
        let meta = self
            .pending_meta()
            .iter()
            .map(|(_, (seq, _))| *seq)
            .min()
            .unwrap_or(u64::MAX);
        let index = read_lock(&self.inner.index_pending)
            .oldest_seq()
            .unwrap_or(u64::MAX);
        meta.min(index)
    }

    /// The postings as reads see them (sled's and the pending ones).
    pub(crate) fn postings(&self) -> crate::index::PostingsReader<'_> {
        crate::index::PostingsReader {
            db: &self.inner.main,
            pending: &self.inner.index_pending,
        }
    }

    /// Writes the pending index entries to sled and flushes it (callers hold the write
    /// lock, so no commit adds to them meanwhile).
    pub(crate) fn write_index_pending(&self, _write: &WriteGuard<'_>) -> Result<(), StorageError> {
        let inner = &self.inner;
        if read_lock(&inner.index_pending).oldest_seq().is_none() {
            return Ok(());
        }
        read_lock(&inner.index_pending).write(&inner.main)?;
        inner.main.flush()?;
        write_lock(&inner.index_pending).clear();
        Ok(())
    }

    fn pending_meta(&self) -> MutexGuard<'_, PendingMap> {
        self.inner
            .meta_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every ingest-state entry whose key starts with `prefix`, in key order.
    pub fn meta_scan_prefix(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, StorageError> {
        let mut found = BTreeMap::new();
        for kv in self.inner.main.scan_prefix(keys::meta(prefix)) {
            let (k, v) = kv?;
            found.insert(k[1..].to_vec(), Some(v.to_vec()));
        }
        let pending = self.pending_meta();
        for (k, (_, v)) in pending.scan_prefix(prefix) {
            found.insert(k.to_vec(), v.as_ref().map(MetaBytes::to_vec));
        }
        Ok(found
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// A reader of the write-ahead log from the record after sequence `after`; it returns
    /// only fsynced records.
    pub fn wal_tailer(&self, after: u64) -> wal::Tailer {
        wal::Tailer::new(&self.inner.dir.join("wal"), after)
            .up_to(self.inner.pipeline.durable.clone())
    }

    /// The write lock for maintenance: taken once every commit that passed validation is
    /// applied (or failed), so the head, sled and the log hold every commit so far.
    pub(crate) fn lock_write(&self) -> WriteGuard<'_> {
        let mut w = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        self.inner
            .pipeline
            .drain(self.inner.next_wal.load(Ordering::SeqCst));
        w.clear();
        w
    }

    /// The sequence of the newest record in the write-ahead log (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.inner.last_record.load(Ordering::SeqCst)
    }

    /// The labels of series `id`, while the store has it.
    pub fn series_labels(&self, id: SeriesId) -> Option<Labels> {
        let head = read_lock(&self.inner.head);
        Labels::decode(&head.series.get(id)?.labels).ok()
    }

    /// Keeps the log's records from sequence `first_needed` on for reader `name` (up to
    /// `wal_hold_max_bytes`), replacing its earlier hold.
    pub fn hold_wal(&self, name: &str, first_needed: u64) {
        let mut h = self.inner.holds.lock().unwrap_or_else(|e| e.into_inner());
        h.entry(name.to_owned()).or_insert((first_needed, 0)).0 = first_needed;
    }

    /// Samples dropped from reader `name`'s hold because the held log grew too big.
    pub fn wal_hold_dropped(&self, name: &str) -> u64 {
        let h = self.inner.holds.lock().unwrap_or_else(|e| e.into_inner());
        h.get(name).map_or(0, |x| x.1)
    }

    /// The log's segments and the bytes of frames in each ([`wal::segment_sizes`]); the
    /// directory is listed outside the log's lock, which commits take.
    pub(crate) fn wal_segment_sizes(&self) -> Result<Vec<(u64, u64)>, StorageError> {
        let current = self
            .inner
            .wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current();
        wal::segment_sizes(&self.inner.dir.join("wal"), current)
    }

    /// Bytes of log segments holding records after sequence `after` (a reader's backlog).
    pub fn wal_bytes_after(&self, after: u64) -> u64 {
        let segs = self.wal_segment_sizes().unwrap_or_default();
        segs.iter()
            .enumerate()
            .filter(|(i, _)| segs.get(i + 1).is_none_or(|n| n.0 > after + 1))
            .map(|(_, s)| s.1)
            .sum()
    }

    /// Number of series the store knows (with those of every commit acknowledged before).
    pub fn series_count(&self) -> usize {
        self.inner.pipeline.settle();
        read_lock(&self.inner.head).series.len()
    }

    /// Number of blocks (days) holding data, compacted or staged.
    pub fn block_count(&self) -> usize {
        self.days().len()
    }

    /// Start times of the blocks (days) holding data, compacted or staged, oldest first.
    pub(crate) fn days(&self) -> Vec<i64> {
        let bd = self.inner.config.block_duration_ms;
        let w = read_lock(&self.inner.windows);
        let days: std::collections::BTreeSet<i64> = w
            .staging
            .keys()
            .chain(w.files.keys())
            .map(|(w, _)| w.div_euclid(bd) * bd)
            .collect();
        days.into_iter().collect()
    }

    /// Stops taking writes and durable marks after `e`, which happened after a log record
    /// was durable (memory and the files may now disagree); opening the store again
    /// replays the log.
    pub(crate) fn stop_writes(&self, e: &StorageError) {
        let mut stopped = self.inner.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if stopped.is_none() {
            tracing::error!(error = %e, "the store stops taking writes; restart the process to recover from the log");
            *stopped = Some(e.to_string());
        }
    }

    /// Why the store takes no more writes (see [`StorageError::Stopped`]), if it stopped.
    pub fn write_error(&self) -> Option<String> {
        self.inner
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Err(Stopped)` once [`Storage::stop_writes`] was called.
    pub(crate) fn check_writable(&self) -> Result<(), StorageError> {
        match &*self.inner.stopped.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(StorageError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// The store's durability order, in one place (storage/docs/format.md, "Durability
    /// order"):
    ///
    /// 1. A commit is acknowledged only once its log record is fsynced; what it changes in
    ///    sled (series, postings, ingest state) and staging (cut chunks) is written
    ///    without fsync.
    /// 2. Here: every staging file is fsynced, *then* each series' `persisted maxt`
    ///    is raised to the end of its newest cut chunk, *then* `main/` is fsynced. At open
    ///    only staged chunks at or before that mark are trusted; later ones are discarded
    ///    and cut again from the log (`discard_undurable_chunks`).
    /// 3. Only after this may the log lose records (those before the first record of every
    ///    open head chunk), and may compaction record a window's pages as compacted and
    ///    delete its staging file (the pages are fsynced before).
    ///
    /// Pending ingest state carried by log records before `meta_before` (the log may lose
    /// them after this) goes to sled before `main/` is fsynced; the rest stays pending, its
    /// records in the log. Pending index entries (postings and series entries of commits)
    /// all go to sled first, every time: a raised mark must find its series' entry there
    /// (a mark raised in memory for a series whose entry was still pending would be lost
    /// in sled, and open would discard that series' staged chunks after the log had lost
    /// their records).
    ///
    /// Callers hold the write lock (`_write`, from [`Storage::lock_write`]), so no commit
    /// cuts a chunk meanwhile.
    pub(crate) fn mark_durable(
        &self,
        _write: &WriteGuard<'_>,
        meta_before: u64,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        // A store that stopped (memory and files may disagree) marks nothing.
        self.check_writable()?;
        // After a failed fsync the kernel may have dropped the pages it could not write,
        // and a later fsync would succeed without them: never mark after one.
        if let Err(e) = self.flush_staging() {
            self.stop_writes(&e);
            return Err(e);
        }
        // Series entries first: the raised marks below change them.
        let write_index = read_lock(&inner.index_pending).oldest_seq().is_some();
        if write_index {
            read_lock(&inner.index_pending).write(&inner.main)?;
        }
        let raised: Vec<(SeriesId, i64)> = read_lock(&inner.head)
            .series
            .values()
            .filter(|s| s.staged_maxt > s.durable_maxt)
            .map(|s| (s.id, s.staged_maxt))
            .collect();
        let mut delta = crate::index::SeriesDelta::default();
        for &(id, t) in &raised {
            delta.push(id, SeriesOp::RaiseMaxt(t));
        }
        delta.apply(&inner.main)?;
        // Ingest state whose records the log may lose into sled, flushed with it below.
        // Commits (which add to it) are held off by the write lock; on an error it stays
        // pending and the log is kept.
        {
            let mut pending = self.pending_meta();
            let mut batch = Writes::default();
            for (k, (seq, v)) in pending.iter() {
                if *seq >= meta_before {
                    continue;
                }
                match v {
                    Some(v) => batch.insert(keys::meta(&k.to_vec()), v.to_vec()),
                    None => batch.remove(keys::meta(&k.to_vec())),
                }
            }
            batch.apply(&inner.main)?;
            pending.retain(|_, (seq, _)| *seq >= meta_before);
        }
        inner.main.flush()?;
        if write_index {
            write_lock(&inner.index_pending).clear();
        }
        let mut head = write_lock(&inner.head);
        for (id, t) in raised {
            if let Some(s) = head.series.get_mut(id) {
                s.durable_maxt = s.durable_maxt.max(t);
            }
        }
        Ok(())
    }

    /// Bytes the data directory takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        dir_size(&self.inner.dir)
    }

    pub fn stats(&self) -> &StorageStats {
        &self.inner.stats
    }

    /// Flushes everything to disk (used before a clean shutdown; commits are durable anyway).
    pub fn flush(&self) -> Result<(), StorageError> {
        let w = self.lock_write();
        self.mark_durable(&w, u64::MAX)
    }
}

/// The write lock held (see [`Inner`]).
pub(crate) type WriteGuard<'a> = MutexGuard<'a, InFlight>;

/// An ingest-state key and its value.
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// sled writes of one commit or replay. They need not be atomic (the write-ahead log is),
/// and sled holds a huge batch in memory many times over (measured: one 70,000-key batch
/// cost 2.4 GB RSS), so they are applied in small batches.
#[derive(Default)]
pub(crate) struct Writes {
    kv: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub postings: crate::index::PostingsDelta,
    pub series: crate::index::SeriesDelta,
}

impl Writes {
    pub fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.kv
            .push((k.as_ref().to_vec(), Some(v.as_ref().to_vec())));
    }
    pub fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.kv.push((k.as_ref().to_vec(), None));
    }
    pub fn apply(self, db: &sled::Db) -> Result<(), StorageError> {
        self.postings.apply(db)?;
        self.series.apply(db)?;
        for part in self.kv.chunks(256) {
            let mut b = sled::Batch::default();
            for (k, v) in part {
                match v {
                    Some(v) => b.insert(k.as_slice(), v.as_slice()),
                    None => b.remove(k.as_slice()),
                }
            }
            db.apply_batch(b)?;
        }
        Ok(())
    }
}

/// Queues the sled entries of a new series: its `S` entry (first sample time) and its
/// postings (the label sets and labels -> id live in memory and are rebuilt from these).
pub(crate) fn series_keys(batch: &mut Writes, id: SeriesId, labels: &Labels, first_t: i64) {
    batch.series.push(id, SeriesOp::Add { first_t });
    for l in labels.iter() {
        batch.postings.add(&l.name, &l.value, id);
    }
}

/// Opens a sled database, waiting up to 5 s for its file lock: sled's background threads
/// release a just-dropped handle of the same process asynchronously.
pub(crate) fn open_retrying(config: sled::Config) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() > deadline {
                    return Err(StorageError::Config(format!(
                        "{e}: another process is using this data directory; stop it or use another --data-dir"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

/// Subdirectories of `dir` (missing: none) by name.
pub(crate) fn dir_size(p: &Path) -> Result<u64, StorageError> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let rd = match std::fs::read_dir(p) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::Io(p.to_owned(), e)),
    };
    for e in rd {
        let e = e.map_err(|e| StorageError::Io(p.to_owned(), e))?;
        let m = e
            .metadata()
            .map_err(|err| StorageError::Io(e.path(), err))?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.blocks() * 512
        };
    }
    Ok(total)
}

pub(crate) fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A poisoned lock means a panic while it was held; the structures are still
    // consistent (every change is a single insert or remove).
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
