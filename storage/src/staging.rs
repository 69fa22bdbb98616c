//! Staging: cut chunks in an append-only file per chunk window and generation
//! (`staging/<window start>-<gen>.kps`), one checksummed record per chunk, with an index in
//! memory; written without fsync until `Storage::mark_durable`. Late samples (a series first
//! seen with old timestamps) can reach a window after its compaction: they are staged under
//! the next generation.
//!
//! Why files and not sled (which staged chunks until 2026-12-01): a staged chunk is written
//! once and read until its window is compacted, never changed; sled kept such values at
//! 1.3 to 1.75 times their size (pages rewritten as they filled), a file keeps them at their
//! size plus 24 bytes. sled keeps what changes: series, postings, ingest state.

use crate::blocks::Files;
use crate::chunk::{decode_staged, encode_staged, ChunkSource, StoredChunk};
use crate::db::{read_lock, write_lock, Storage};
use crate::head::{CutChunk, Head, Unstaged};
use crate::winfile::WindowFile;
use crate::{keys, SeriesId, StorageError};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The staging file of one chunk window and generation.
pub(crate) struct Staging {
    pub file: Arc<StagingFile>,
    /// Being compacted: new chunks of the window go to the next generation.
    pub sealed: bool,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Io(path.to_owned(), e)
}

/// Bytes of a record before its value: `len u32 BE | crc32c u32 BE | id u64 BE | mint i64 BE`.
const RECORD_HEAD: usize = 24;
/// Largest record value accepted when reading (a chunk holds at most 120 samples; a corrupt
/// length must not make it allocate more).
const MAX_VALUE: usize = 1 << 20;

/// `(id, mint)` -> (offset of the value, its length).
type Index = BTreeMap<(SeriesId, i64), (u64, u32)>;

/// `(id, mint, value length)` of the whole, checksummed record at `pos`, if there is one.
fn record_at(data: &[u8], pos: usize) -> Option<(SeriesId, i64, usize)> {
    let head = data.get(pos..pos + RECORD_HEAD)?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if !(16..=16 + MAX_VALUE).contains(&len) {
        return None;
    }
    let body = data.get(pos + 8..pos + 8 + len)?;
    let crc = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let id = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
    let mint = i64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
    Some((id, mint, len - 16))
}

/// An append-only file of staged chunks. Record: `len u32 BE` (of what follows the
/// checksum) `| crc32c u32 BE` (of id, mint and value) `| id u64 BE | mint i64 BE | value`,
/// the value as `chunk::encode_staged` makes it. A later record of the same `(id, mint)`
/// replaces an earlier one.
pub(crate) struct StagingFile {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
}

struct State {
    index: Index,
    /// Bytes of the file that hold whole records.
    len: u64,
    /// A write failed and the file could not be cut back to `len`: no more appends.
    poisoned: bool,
}

impl State {
    fn new(index: Index, len: u64) -> Self {
        State {
            index,
            len,
            poisoned: false,
        }
    }
}

impl StagingFile {
    /// Creates an empty staging file (and makes its name durable).
    pub fn create(path: &Path) -> Result<StagingFile, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(io(path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(StagingFile {
            path: path.to_owned(),
            file,
            state: Mutex::new(State::new(Index::new(), 0)),
        })
    }

    /// Opens a staging file, keeping the chunks `keep(id, mint)` accepts; returns it and
    /// how many chunks it left out. Reading stops at the first record that is cut short or
    /// fails its checksum: the process died while the file was written after its last
    /// fsync, and every chunk from there on was cut after the last durable mark (the log
    /// still holds its samples). When anything was left out the file is rewritten with only
    /// what is kept, so that nothing left out can come back later.
    pub fn open(
        path: &Path,
        keep: &mut dyn FnMut(SeriesId, i64) -> bool,
    ) -> Result<(StagingFile, usize), StorageError> {
        let data = std::fs::read(path).map_err(io(path))?;
        let mut index = Index::new();
        let mut pos = 0usize;
        let mut skipped = 0usize;
        while pos < data.len() {
            match record_at(&data, pos) {
                Some((id, mint, len)) => {
                    index.insert((id, mint), ((pos + RECORD_HEAD) as u64, len as u32));
                    pos += RECORD_HEAD + len;
                }
                None => {
                    // Unreadable from here: look for the next whole record, so that damage
                    // loses only what it hit (after a crash, records past the last fsync
                    // may be missing or half there; the mark filters those out below).
                    let next = (pos + 1..data.len()).find(|&p| record_at(&data, p).is_some());
                    let to = next.unwrap_or(data.len());
                    skipped += to - pos;
                    pos = to;
                }
            }
        }
        let cut_short = skipped;
        let before = index.len();
        index.retain(|(id, mint), _| keep(*id, *mint));
        let left_out = before - index.len();
        if cut_short > 0 {
            tracing::warn!(file = %path.display(), bytes = cut_short,
                "staging file holds unreadable bytes (the process died while writing them, or \
                 the disk damaged them); chunks in them past the durable mark are cut again from \
                 the log, any others are lost");
        }
        if cut_short == 0 && left_out == 0 {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(path)
                .map_err(io(path))?;
            let staged = StagingFile {
                path: path.to_owned(),
                file,
                state: Mutex::new(State::new(index, data.len() as u64)),
            };
            return Ok((staged, 0));
        }
        // Rewrite: write `.tmp`, fsync, rename over, fsync the directory.
        let tmp = path.with_extension("kps.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut staged = StagingFile::create(&tmp)?;
        staged.append(index.iter().map(|(&(id, mint), &(at, len))| {
            (id, mint, &data[at as usize..at as usize + len as usize])
        }))?;
        staged.sync()?;
        crate::blocks::commit_pending(&tmp, path)?;
        staged.path = path.to_owned();
        Ok((staged, left_out))
    }

    /// Appends chunks `(id, mint, staged value)` with one write (no fsync: `sync`).
    pub fn append<'a>(
        &self,
        chunks: impl Iterator<Item = (SeriesId, i64, &'a [u8])>,
    ) -> Result<(), StorageError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.poisoned {
            return Err(StorageError::Stopped(format!(
                "a write to {} failed and could not be cut back out",
                self.path.display()
            )));
        }
        let start = state.len;
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for (id, mint, value) in chunks {
            let at = buf.len();
            buf.extend_from_slice(&((16 + value.len()) as u32).to_be_bytes());
            buf.extend_from_slice(&[0; 4]);
            buf.extend_from_slice(&id.to_be_bytes());
            buf.extend_from_slice(&mint.to_be_bytes());
            buf.extend_from_slice(value);
            let crc = crc32c::crc32c(&buf[at + 8..]);
            buf[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
            added.push((
                (id, mint),
                (start + (at + RECORD_HEAD) as u64, value.len() as u32),
            ));
        }
        if let Err(e) = (&self.file).write_all(&buf) {
            // Part of the records may be in the file: cut it back, or later records'
            // offsets would be wrong.
            if self.file.set_len(start).is_err() {
                state.poisoned = true;
            }
            return Err(StorageError::Io(self.path.clone(), e));
        }
        state.len += buf.len() as u64;
        state.index.extend(added);
        Ok(())
    }

    /// Makes everything appended durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file.
    pub fn len(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    /// The chunk whose value is `len` bytes at `at`, its record's checksum checked.
    fn read(
        &self,
        id: SeriesId,
        mint: i64,
        at: u64,
        len: u32,
    ) -> Result<StoredChunk, StorageError> {
        let head = RECORD_HEAD as u64;
        let mut record = vec![0; RECORD_HEAD + len as usize];
        self.file
            .read_exact_at(&mut record, at - head)
            .map_err(io(&self.path))?;
        let crc = u32::from_be_bytes(record[4..8].try_into().expect("4 bytes"));
        if crc32c::crc32c(&record[8..]) != crc {
            return Err(StorageError::Corrupt(format!(
                "staged chunk of series {id} at {mint} in {} fails its checksum",
                self.path.display()
            )));
        }
        Ok(decode_staged(&keys::chunk(id, mint), &record[RECORD_HEAD..])?.1)
    }

    /// `(id, mint, offset, length)` of the chunks of `id` starting at or before `maxt`.
    fn entries_of(&self, id: SeriesId, maxt: i64) -> Vec<(SeriesId, i64, u64, u32)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .index
            .range((id, i64::MIN)..=(id, maxt))
            .map(|(&(id, mint), &(at, len))| (id, mint, at, len))
            .collect()
    }
}

/// Staged and compacted windows, under one lock so that a reader sees a generation either
/// staged or compacted, never both or neither.
#[derive(Default)]
pub(crate) struct Windows {
    /// Staging files by (window start, generation).
    pub staging: BTreeMap<(i64, u32), Staging>,
    /// Compacted window files by (window start, generation).
    pub files: Files,
}

impl Windows {
    /// How many generations of `window` are compacted.
    pub fn compacted_gens(&self, window: i64) -> u32 {
        self.files
            .range((window, 0)..=(window, u32::MAX))
            .next_back()
            .map_or(0, |((_, g), _)| *g)
    }

    /// Compacted window files and staging files of the windows in `[from, to]`.
    pub fn snapshot(&self, from: i64, to: i64) -> (Vec<Arc<WindowFile>>, Vec<Arc<StagingFile>>) {
        if from > to {
            return (Vec::new(), Vec::new());
        }
        (
            self.files
                .range((from, 0)..=(to, u32::MAX))
                .map(|(_, f)| f.clone())
                .collect(),
            self.staging
                .range((from, 0)..=(to, u32::MAX))
                .map(|(_, s)| s.file.clone())
                .collect(),
        )
    }
}

pub(crate) fn staging_path(root: &Path, window: i64, gen: u32) -> PathBuf {
    root.join("staging").join(format!("{window:020}-{gen}.kps"))
}

/// `(window, gen)` of a staging file's name (or of a staging directory's, the layout before
/// 2026-12-01, which has no extension).
pub(crate) fn parse_staging_name(name: &str) -> Option<(i64, u32)> {
    let name = name.strip_suffix(".kps").unwrap_or(name);
    let (w, g) = name.rsplit_once('-')?;
    Some((w.parse().ok()?, g.parse().ok()?))
}

/// One staged window and generation as a chunk source.
pub(crate) struct StagedWindow<'a>(pub &'a StagingFile);

impl ChunkSource for StagedWindow<'_> {
    fn chunks(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        // One window per file: every chunk of `id` in it starts within the window.
        for (id, cmint, at, len) in self.0.entries_of(id, maxt) {
            let c = self.0.read(id, cmint, at, len)?;
            if c.maxt() >= mint {
                out.push(c);
            }
        }
        Ok(())
    }

    fn for_each_series(
        &self,
        f: &mut dyn FnMut(SeriesId, Vec<StoredChunk>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        // The index is in `(id, mint)` order: one series after another, in time order.
        let entries: Vec<(SeriesId, i64, u64, u32)> = {
            let state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .index
                .iter()
                .map(|(&(id, mint), &(at, len))| (id, mint, at, len))
                .collect()
        };
        let mut current: Option<(SeriesId, Vec<StoredChunk>)> = None;
        for (id, mint, at, len) in entries {
            let chunk = self.0.read(id, mint, at, len)?;
            match &mut current {
                Some((cid, cs)) if *cid == id => cs.push(chunk),
                _ => {
                    if let Some((cid, cs)) = current.take() {
                        f(cid, cs)?;
                    }
                    current = Some((id, vec![chunk]));
                }
            }
        }
        if let Some((cid, cs)) = current {
            f(cid, cs)?;
        }
        Ok(())
    }
}

impl Storage {
    /// The open staging file of `window`, or a new one under the next generation.
    pub(crate) fn staging_for(&self, window: i64) -> Result<Arc<StagingFile>, StorageError> {
        let mut w = write_lock(&self.inner.windows);
        let mut gen = w.compacted_gens(window);
        for ((_, g), s) in w.staging.range((window, 0)..=(window, u32::MAX)) {
            if !s.sealed {
                return Ok(s.file.clone());
            }
            gen = gen.max(*g);
        }
        gen += 1;
        let file = Arc::new(StagingFile::create(&staging_path(
            &self.inner.dir,
            window,
            gen,
        ))?);
        w.staging.insert(
            (window, gen),
            Staging {
                file: file.clone(),
                sealed: false,
            },
        );
        Ok(file)
    }

    /// Stages every chunk waiting in [`Head::unstaged`], then `cut`: for callers that hold
    /// the write lock with the pipeline drained (maintenance, replay, a clean stop), so
    /// every waiting chunk failed an earlier write (and is older than any chunk of its
    /// series in `cut`). Many chunks (a clean stop cuts every head chunk) are encoded on
    /// two threads.
    pub(crate) fn write_chunks(&self, head: &mut Head, cut: Vec<CutChunk>) {
        let waiting = std::mem::take(head.unstaged_mut());
        let retrying = waiting.len();
        let mut chunks: Vec<CutChunk> = waiting.into_values().map(|u| u.chunk).collect();
        chunks.extend(cut);
        let mut encoded = HashMap::new();
        if chunks.len() >= 4096 {
            let (a, b) = chunks.split_at(chunks.len() / 2);
            let (ea, eb) = std::thread::scope(|sc| {
                let other = sc.spawn(|| encode_for_staging(b));
                (encode_for_staging(a), other.join())
            });
            encoded.extend(ea);
            if let Ok(eb) = eb {
                encoded.extend(eb);
            }
        }
        self.stage_chunks(head, chunks, retrying, &mut encoded);
    }

    /// Appends the chunks in [`Head::unstaged`] cut by commits up to `through` (and those
    /// whose write failed) to their windows' staging files; see [`Self::stage_chunks`].
    pub(crate) fn stage_unstaged(
        &self,
        head: &mut Head,
        through: u64,
        encoded: &mut HashMap<(SeriesId, i64), Vec<u8>>,
    ) {
        let keys: Vec<(SeriesId, i64)> = head
            .unstaged_mut()
            .iter()
            .filter(|(_, u)| u.cut_by <= through || u.failed)
            .map(|(k, _)| *k)
            .collect();
        let mut retrying = 0;
        let chunks: Vec<CutChunk> = keys
            .iter()
            .filter_map(|k| head.unstaged_mut().remove(k))
            .map(|u| {
                retrying += usize::from(u.failed);
                u.chunk
            })
            .collect();
        self.stage_chunks(head, chunks, retrying, encoded);
    }

    /// Appends `chunks` (each series' in time order) to their windows' staging files (not
    /// fsynced: the write-ahead records still hold their samples until `maintain` marks
    /// them durable and truncates), and raises each written chunk's series' staged maxt.
    /// `encoded` has the staged values made beforehand, by (series, first time); the others
    /// are encoded here. Called with the head's write lock held, so readers see every chunk
    /// either in staging or in the head.
    ///
    /// When a write fails (a full disk), that chunk and every one after it go to
    /// `head.unstaged`: readable, not covered by any durable mark, their log records kept,
    /// and written again next time (`retrying` of `chunks` are such). A series' chunks
    /// reach staging in time order, so no mark ever covers a chunk that is not staged. The
    /// commit that cut them still succeeds: its samples are durable in the log.
    fn stage_chunks(
        &self,
        head: &mut Head,
        chunks: Vec<CutChunk>,
        retrying: usize,
        encoded: &mut HashMap<(SeriesId, i64), Vec<u8>>,
    ) {
        if chunks.is_empty() {
            return;
        }
        let span = self.inner.config.chunk_span_ms;
        // Windows in time order; within one, in the order given.
        let mut by_window: BTreeMap<i64, Vec<CutChunk>> = BTreeMap::new();
        for c in chunks {
            by_window
                .entry(c.mint.div_euclid(span) * span)
                .or_default()
                .push(c);
        }
        let mut failed: Option<StorageError> = None;
        let mut written = 0u64;
        for (window, chunks) in by_window {
            if failed.is_none() {
                let values: Vec<(SeriesId, i64, Vec<u8>)> = chunks
                    .iter()
                    .map(|c| {
                        let v = encoded
                            .remove(&(c.id, c.mint))
                            .unwrap_or_else(|| encode_staged(c.mint, c.maxt, &c.bytes));
                        (c.id, c.mint, v)
                    })
                    .collect();
                match self.stage(window, &values) {
                    Ok(()) => {
                        for c in &chunks {
                            if let Some(s) = head.series.get_mut(c.id) {
                                s.staged_maxt = s.staged_maxt.max(c.maxt);
                            }
                        }
                        written += chunks.len() as u64;
                        continue;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            for chunk in chunks {
                let key = (chunk.id, chunk.mint);
                let u = Unstaged {
                    chunk,
                    cut_by: 0,
                    failed: true,
                };
                head.unstaged_mut().insert(key, u);
            }
        }
        self.inner
            .stats
            .chunks_cut
            .fetch_add(written, Ordering::Relaxed);
        match failed {
            Some(e) => {
                if matches!(e, StorageError::Stopped(_)) {
                    self.stop_writes(&e);
                }
                tracing::warn!(error = %e, unstaged = head.unstaged_mut().len(),
                    "cannot write cut chunks to staging; they stay in memory and in the log \
                     and are written again with the next chunks or maintenance");
            }
            None if retrying > 0 => {
                tracing::info!(
                    chunks = retrying,
                    "staged the chunks an earlier write could not"
                );
            }
            None => {}
        }
    }

    fn stage(&self, window: i64, values: &[(SeriesId, i64, Vec<u8>)]) -> Result<(), StorageError> {
        let file = self.staging_for(window)?;
        file.append(
            values
                .iter()
                .map(|(id, mint, v)| (*id, *mint, v.as_slice())),
        )
    }

    /// Makes the staged chunks durable.
    pub(crate) fn flush_staging(&self) -> Result<(), StorageError> {
        let files: Vec<Arc<StagingFile>> = read_lock(&self.inner.windows)
            .staging
            .values()
            .map(|s| s.file.clone())
            .collect();
        for f in files {
            f.sync()?;
        }
        Ok(())
    }
}

/// The staged values of `chunks` (`encode_staged`), by (series, first time): made before
/// staging, outside the head's lock or on several threads.
pub(crate) fn encode_for_staging(chunks: &[CutChunk]) -> Vec<((SeriesId, i64), Vec<u8>)> {
    chunks
        .iter()
        .map(|c| ((c.id, c.mint), encode_staged(c.mint, c.maxt, &c.bytes)))
        .collect()
}

/// Opens the staging files at open, keeping only the chunks that begin at or before their
/// series' durable mark (and belong to a series the table knows): a chunk cut after the
/// last [`Storage::mark_durable`] may have reached the disk while chunks before it did not
/// (nothing was fsynced after it), and the log, which is not truncated past the mark, still
/// holds all of its samples. Replay then cuts them again. A chunk at or before the mark was
/// fsynced before the mark was written.
///
/// A staging directory of a version before 2026-12-01 (a sled database) is read into a
/// staging file first, then removed.
pub(crate) fn open_staging(
    root: &Path,
    compacted: &Files,
    head: &Head,
) -> Result<BTreeMap<(i64, u32), Staging>, StorageError> {
    let dir = root.join("staging");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        names.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    names.sort();
    let mut staging = BTreeMap::new();
    let mut discarded = 0usize;
    for (name, path) in names {
        if name.ends_with(".tmp") {
            // A rewrite that did not finish (the file it was to replace is still there; an
            // earlier entry of this loop may have rewritten and so removed it already).
            remove_staged(&path)?;
            continue;
        }
        let Some((w, gen)) = parse_staging_name(&name) else {
            tracing::warn!(path = %path.display(), "ignoring unknown file in staging/");
            continue;
        };
        if compacted.range((w, gen)..=(w, u32::MAX)).next().is_some() {
            // Compacted, but the process stopped before deleting it.
            remove_staged(&path)?;
            continue;
        }
        let file_path = staging_path(root, w, gen);
        if path.is_dir() {
            if file_path.exists() {
                // Moved into its file before the process stopped; the file comes next.
                remove_staged(&path)?;
                continue;
            }
            migrate_sled_staging(&path, &file_path)?;
        }
        let mut keep =
            |id: SeriesId, mint: i64| head.series.get(id).is_some_and(|s| mint <= s.durable_maxt);
        let (file, left_out) = StagingFile::open(&file_path, &mut keep)?;
        discarded += left_out;
        staging.insert(
            (w, gen),
            Staging {
                file: Arc::new(file),
                sealed: false,
            },
        );
    }
    if discarded > 0 {
        tracing::info!(
            chunks = discarded,
            "discarded staged chunks cut after the last durable mark; the log replays their samples"
        );
    }
    Ok(staging)
}

/// Reads a sled staging database (the layout before 2026-12-01) into a staging file,
/// fsyncs it, then removes the database.
fn migrate_sled_staging(db_dir: &Path, file_path: &Path) -> Result<(), StorageError> {
    // Opened as `open_block` wrote it (sled refuses another compression setting); waiting
    // for its lock as every sled open does (a handle just dropped releases it late).
    let db = crate::db::open_retrying(sled::Config::new().path(db_dir).use_compression(true))?;
    let tmp = file_path.with_extension("kps.tmp");
    let _ = std::fs::remove_file(&tmp);
    let file = StagingFile::create(&tmp)?;
    let mut n = 0usize;
    let mut batch: Vec<(SeriesId, i64, Vec<u8>)> = Vec::new();
    for kv in db.iter() {
        let (k, v) = kv?;
        let (id, mint) = keys::parse_chunk(&k)
            .ok_or_else(|| StorageError::Corrupt("staged chunk key".into()))?;
        batch.push((id, mint, v.to_vec()));
        if batch.len() == 4096 {
            n += batch.len();
            file.append(batch.iter().map(|(i, m, v)| (*i, *m, v.as_slice())))?;
            batch.clear();
        }
    }
    n += batch.len();
    file.append(batch.iter().map(|(i, m, v)| (*i, *m, v.as_slice())))?;
    file.sync()?;
    drop(db);
    crate::blocks::commit_pending(&tmp, file_path)?;
    std::fs::remove_dir_all(db_dir).map_err(io(db_dir))?;
    tracing::info!(from = %db_dir.display(), to = %file_path.display(), chunks = n,
        "moved a staging database of an earlier version into a staging file");
    Ok(())
}

/// Removes a staging file (or a staging directory of an earlier version).
pub(crate) fn remove_staged(path: &Path) -> Result<(), StorageError> {
    let r = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StorageError::Io(path.to_owned(), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::encode_staged;
    use crate::chunkenc;

    fn value(id: u64, mint: i64) -> Vec<u8> {
        let samples: Vec<(i64, f64)> = (0..30)
            .map(|i| (mint + i * 10_000, (id as i64 * 1_000 + i) as f64 / 3.0))
            .collect();
        encode_staged(mint, mint + 290_000, &chunkenc::encode_all(&samples))
    }

    fn chunks_of(f: &StagingFile) -> Vec<(SeriesId, i64, i64)> {
        let mut out = Vec::new();
        StagedWindow(f)
            .for_each_series(&mut |id, cs| {
                out.extend(cs.iter().map(|c| (id, c.mint(), c.maxt())));
                Ok(())
            })
            .unwrap();
        out
    }

    fn head_with_marks(marks: &[(SeriesId, i64)]) -> Head {
        let mut head = Head::default();
        for &(id, mark) in marks {
            head.insert_series(id, Arc::from(id.to_be_bytes().to_vec()), 0, mark);
        }
        head
    }

    /// A record cut short or damaged ends what is read; the file is rewritten without it,
    /// and appends after that are read back on the next open.
    #[test]
    fn a_torn_tail_is_cut_and_the_file_stays_appendable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0-1.kps");
        let f = StagingFile::create(&path).unwrap();
        let vals: Vec<(u64, i64, Vec<u8>)> =
            (0..10u64).map(|id| (id, 1_000, value(id, 1_000))).collect();
        f.append(vals.iter().map(|(i, m, v)| (*i, *m, v.as_slice())))
            .unwrap();
        f.sync().unwrap();
        let full = f.len();
        assert_eq!(full, std::fs::metadata(&path).unwrap().len());
        drop(f);
        // The last record cut short, then garbage after a whole one (a damaged length).
        let damages: [fn(&mut Vec<u8>); 2] = [
            |d| d.truncate(d.len() - 7),
            |d| d.extend_from_slice(&[0xff; 40]),
        ];
        for (round, damage) in damages.into_iter().enumerate() {
            let new_id = 99 + round as u64;
            let mut data = std::fs::read(&path).unwrap();
            damage(&mut data);
            std::fs::write(&path, &data).unwrap();
            let (f, left_out) = StagingFile::open(&path, &mut |_, _| true).unwrap();
            assert_eq!(left_out, 0);
            let got = chunks_of(&f);
            assert!(got.len() >= 9 && got.len() <= 10, "{got:?}");
            assert_eq!(f.len(), std::fs::metadata(&path).unwrap().len());
            let extra = value(new_id, 2_000);
            f.append(std::iter::once((new_id, 2_000, extra.as_slice())))
                .unwrap();
            f.sync().unwrap();
            drop(f);
            let (f, _) = StagingFile::open(&path, &mut |_, _| true).unwrap();
            let again = chunks_of(&f);
            assert_eq!(again.len(), got.len() + 1, "{again:?}");
            assert_eq!(again.last().unwrap().0, new_id);
            // Every chunk decodes to its samples.
            let mut s = Vec::new();
            StagedWindow(&f).chunks(3, 0, i64::MAX, &mut s).unwrap();
            let mut samples = Vec::new();
            s[0].decode_into(&mut samples).unwrap();
            assert_eq!(samples.len(), 30);
            assert_eq!(samples[4].1, (3_000 + 4) as f64 / 3.0);
        }
    }

    /// Chunks past their series' durable mark are removed from the file itself at open, so
    /// they cannot come back once a later mark covers their start.
    #[test]
    fn chunks_past_the_mark_are_removed_for_good() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("staging")).unwrap();
        let path = staging_path(dir.path(), 0, 1);
        let f = StagingFile::create(&path).unwrap();
        let vals: Vec<(u64, i64, Vec<u8>)> = [(1, 1_000), (1, 400_000), (2, 1_000), (3, 5)]
            .iter()
            .map(|&(id, m)| (id, m, value(id, m)))
            .collect();
        f.append(vals.iter().map(|(i, m, v)| (*i, *m, v.as_slice())))
            .unwrap();
        drop(f);
        // Series 1 is durable up to its first chunk, series 2 entirely; series 3 is unknown.
        let head = head_with_marks(&[(1, 291_000), (2, 291_000)]);
        let staging = open_staging(dir.path(), &Files::new(), &head).unwrap();
        let f = &staging[&(0, 1)].file;
        assert_eq!(chunks_of(f), vec![(1, 1_000, 291_000), (2, 1_000, 291_000)]);
        drop(staging);
        // A later mark covers the discarded chunk's start: it stays gone.
        let head = head_with_marks(&[(1, i64::MAX), (2, i64::MAX), (3, i64::MAX)]);
        let staging = open_staging(dir.path(), &Files::new(), &head).unwrap();
        assert_eq!(chunks_of(&staging[&(0, 1)].file).len(), 2);
    }

    /// A sled staging database of an earlier version becomes a staging file with the same
    /// chunks; its directory goes.
    #[test]
    fn sled_staging_of_an_earlier_version_is_moved_into_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir
            .path()
            .join("staging")
            .join(format!("{:020}-2", 7_200_000));
        {
            // As `open_block` opened staging databases before 2026-12-01.
            let db = sled::Config::new()
                .path(&old)
                .use_compression(true)
                .flush_every_ms(None)
                .open()
                .unwrap();
            for id in 0..50u64 {
                db.insert(keys::chunk(id, 7_201_000), value(id, 7_201_000))
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let marks: Vec<(SeriesId, i64)> = (0..50).map(|id| (id, i64::MAX)).collect();
        let staging = open_staging(dir.path(), &Files::new(), &head_with_marks(&marks)).unwrap();
        assert!(!old.exists());
        let f = &staging[&(7_200_000, 2)].file;
        assert_eq!(f.path(), staging_path(dir.path(), 7_200_000, 2));
        assert_eq!(chunks_of(f).len(), 50);
    }

    /// Damage in the middle of a file loses only the record it hit; a record damaged after
    /// open is refused when read, never returned; a leftover `.tmp` does not stop the open.
    #[test]
    fn damage_loses_only_what_it_hit_and_is_never_read_as_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("staging")).unwrap();
        let path = staging_path(dir.path(), 0, 1);
        let f = StagingFile::create(&path).unwrap();
        let vals: Vec<(u64, i64, Vec<u8>)> =
            (0..10u64).map(|id| (id, 1_000, value(id, 1_000))).collect();
        f.append(vals.iter().map(|(i, m, v)| (*i, *m, v.as_slice())))
            .unwrap();
        let third = f.entries_of(3, i64::MAX)[0].2 as usize;
        drop(f);
        let mut data = std::fs::read(&path).unwrap();
        data[third + 5] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        // A rewrite that never finished, and a process that died before removing it.
        std::fs::write(path.with_extension("kps.tmp"), b"half").unwrap();
        let marks: Vec<(SeriesId, i64)> = (0..10).map(|id| (id, i64::MAX)).collect();
        let staging = open_staging(dir.path(), &Files::new(), &head_with_marks(&marks)).unwrap();
        assert!(!path.with_extension("kps.tmp").exists());
        let f = staging[&(0, 1)].file.clone();
        let ids: Vec<SeriesId> = chunks_of(&f).iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
        // Bit rot after open: the read fails, it does not answer other samples.
        let at = f.entries_of(7, i64::MAX)[0].2;
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAA], at + 3).unwrap();
        let mut out = Vec::new();
        let err = StagedWindow(&f)
            .chunks(7, 0, i64::MAX, &mut out)
            .unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(out.is_empty());
    }

    /// A write that fails is cut back out of the file, or, when that fails too, refuses
    /// every later append: later records' offsets are never wrong.
    #[test]
    fn a_failed_write_never_leaves_later_offsets_wrong() {
        let full = StagingFile {
            path: PathBuf::from("/dev/full"),
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/full")
                .unwrap(),
            state: Mutex::new(State::new(Index::new(), 0)),
        };
        let v = value(1, 1_000);
        assert!(full
            .append(std::iter::once((1, 1_000, v.as_slice())))
            .is_err());
        assert!(full
            .append(std::iter::once((2, 1_000, v.as_slice())))
            .is_err());
        assert!(full.entries_of(1, i64::MAX).is_empty());
        assert!(full.entries_of(2, i64::MAX).is_empty());
    }
}
