//! The head: every series in memory (labels, time range, durable mark) and its open chunk,
//! which takes samples until it holds 120 or the next sample falls in another chunk window;
//! then it is cut and goes to staging. Guarded by `Inner::head` (see `db` for the lock order):
//! the commit pipeline's apply stage changes a series' open chunk and time range under the
//! head's *read* lock and the series' own lock ([`MemSeries::open`]), so that lookups,
//! validation and queries go on meanwhile; everything else changes the head under its
//! write lock.

use crate::chunk::{ChunkSource, StoredChunk};
use crate::chunkenc::{XorAppender, MAX_SAMPLES};
use crate::series_table::SeriesTable;
use crate::{SeriesId, StorageConfig, StorageError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) struct HeadChunk {
    pub app: XorAppender,
    /// Write-ahead record of the chunk's first sample.
    pub first_wal: u64,
}

impl HeadChunk {
    /// The chunk window the chunk is in (that of its first sample; it never spans two).
    pub fn window(&self, config: &StorageConfig) -> i64 {
        self.app.mint().div_euclid(config.chunk_span_ms)
    }
}

pub(crate) struct MemSeries {
    pub id: SeriesId,
    pub labels: Arc<[u8]>,
    /// What appending changes: locked by the apply stage (under the head's read lock) and
    /// by whoever reads it under the head's read lock; see [`MemSeries::open`].
    open: Mutex<Open>,
    /// End of the newest chunk written to staging (maybe not yet fsynced); `i64::MIN` for
    /// none.
    pub staged_maxt: i64,
    /// End of the newest chunk known to be on disk: the series' `persisted maxt` in the
    /// series table, raised only by [`Storage::mark_durable`].
    pub durable_maxt: i64,
}

/// A series' open chunk and time range, which appending changes.
pub(crate) struct Open {
    pub head: Option<HeadChunk>,
    /// First sample time (kept, not raised by retention: an over-estimate of the range).
    pub mint: i64,
    /// Last sample time; `i64::MIN` without samples.
    pub maxt: i64,
}

impl MemSeries {
    /// A series without a head chunk whose samples up to `maxt` are durable in chunks.
    pub fn new(id: SeriesId, labels: Arc<[u8]>, mint: i64, maxt: i64) -> Self {
        MemSeries {
            id,
            labels,
            open: Mutex::new(Open {
                head: None,
                mint,
                maxt,
            }),
            staged_maxt: maxt,
            durable_maxt: maxt,
        }
    }

    /// The series' open chunk and time range, for a holder of the head's read lock (the
    /// apply stage may be appending to other series meanwhile). A chunk the apply stage
    /// cuts goes to [`Head::unstaged`] while it holds this lock, so a reader that holds it
    /// across `unstaged` and the open chunk sees the chunk in one of them.
    pub fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Self::open`] for a holder of the head's write lock.
    pub fn open_mut(&mut self) -> &mut Open {
        self.open.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

/// A map of the head, hashed with a seeded foldhash (label sets come from clients; the
/// per-process seed keeps them from choosing collisions).
pub(crate) type HeadMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
pub(crate) struct Head {
    /// Every series, by id and by encoded label set.
    pub series: SeriesTable,
    /// Chunks cut from the head and not in staging yet, by (series, first time), read from
    /// here until they are: those of commits whose staging turn has not come (see
    /// `pipeline`), and those whose write to staging failed (a full disk), written again
    /// by the next commit or maintenance that stages chunks. Their series' staged maxt
    /// does not cover them, so no durable mark does, and the log keeps their records (see
    /// `Storage::stage_unstaged`). Locked on its own: the apply stage adds to it under the
    /// head's read lock (holding the series' [`MemSeries::open`]).
    pub unstaged: Mutex<BTreeMap<(SeriesId, i64), Unstaged>>,
}

/// A chunk in [`Head::unstaged`].
pub(crate) struct Unstaged {
    pub chunk: CutChunk,
    /// The commit that cut it (0: maintenance, replay or a clean stop, which stage at once).
    pub cut_by: u64,
    /// A write of it to staging failed.
    pub failed: bool,
}

impl Head {
    /// Adds a series without a head chunk, findable by id and by its encoded labels; its
    /// samples up to `maxt` are durable in chunks.
    pub fn insert_series(&mut self, id: SeriesId, labels: Arc<[u8]>, mint: i64, maxt: i64) {
        self.series.insert(MemSeries::new(id, labels, mint, maxt));
    }

    /// Keeps `cut` readable until it is staged (see [`Head::unstaged`]).
    pub fn queue_cut(&self, cut: impl IntoIterator<Item = CutChunk>, cut_by: u64) {
        let mut unstaged = self.unstaged();
        for chunk in cut {
            let u = Unstaged {
                chunk,
                cut_by,
                failed: false,
            };
            unstaged.insert((u.chunk.id, u.chunk.mint), u);
        }
    }

    /// [`Head::unstaged`], for a holder of the head's read lock.
    pub fn unstaged(&self) -> MutexGuard<'_, BTreeMap<(SeriesId, i64), Unstaged>> {
        self.unstaged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Head::unstaged`], for a holder of the head's write lock.
    pub fn unstaged_mut(&mut self) -> &mut BTreeMap<(SeriesId, i64), Unstaged> {
        self.unstaged.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
pub(crate) struct CutChunk {
    pub id: SeriesId,
    pub mint: i64,
    pub maxt: i64,
    pub bytes: Vec<u8>,
    /// Write-ahead record of the chunk's first sample.
    pub first_wal: u64,
}

/// Appends one sample (already validated as newer) to a series' head chunk; returns the
/// chunk it cut, if any.
pub(crate) fn append_to_head(
    config: &StorageConfig,
    id: SeriesId,
    s: &mut Open,
    t: i64,
    v: f64,
    wal_seq: u64,
) -> Option<CutChunk> {
    let window = t.div_euclid(config.chunk_span_ms);
    let mut cut = None;
    let full = s
        .head
        .as_ref()
        .is_some_and(|h| h.app.len() >= MAX_SAMPLES || h.window(config) != window);
    if full {
        cut = s.head.take().map(|h| cut_chunk(id, h));
    }
    let h = s.head.get_or_insert_with(|| HeadChunk {
        app: XorAppender::new(),
        first_wal: wal_seq,
    });
    h.app.append(t, v);
    if s.mint == i64::MIN || t < s.mint {
        s.mint = t;
    }
    s.maxt = t;
    cut
}

/// [`append_to_head`] for a run of one series' samples (already validated as newer, in
/// time order), pushing the chunks it cuts to `cut`: the head chunk's window is worked out
/// once per chunk, not with two divisions per sample (this runs in the commit pipeline's
/// serial apply stage).
pub(crate) fn append_run_to_head(
    config: &StorageConfig,
    id: SeriesId,
    s: &mut Open,
    run: impl Iterator<Item = (i64, f64)>,
    wal_seq: u64,
    cut: &mut Vec<CutChunk>,
) {
    let span = config.chunk_span_ms;
    let window_start = |h: &HeadChunk| h.app.mint().div_euclid(span) * span;
    let mut start = s.head.as_ref().map(window_start);
    // Room for half the chunk just cut in the next one: a series' chunks are about the
    // same size, and growing from nothing reallocated ~10 times per chunk of random floats
    // (a quarter of this serial stage's time); half keeps an open chunk's unused room
    // small (it is paid per series).
    let mut room = 2;
    for (t, v) in run {
        let fits = |h: &HeadChunk, start: i64| {
            h.app.len() < MAX_SAMPLES && t >= start && (t as i128 - start as i128) < span as i128
        };
        if let (Some(h), Some(st)) = (&s.head, start) {
            if !fits(h, st) {
                if let Some(h) = s.head.take() {
                    room = h.app.bytes().len() / 2;
                    cut.push(cut_chunk(id, h));
                }
            }
        }
        let h = s.head.get_or_insert_with(|| HeadChunk {
            app: XorAppender::with_capacity(room),
            first_wal: wal_seq,
        });
        h.app.append(t, v);
        if h.app.len() == 1 {
            start = Some(window_start(h));
        }
        if s.mint == i64::MIN || t < s.mint {
            s.mint = t;
        }
        s.maxt = t;
    }
}

/// The head chunk `h` as a cut chunk (its buffer moves: it lives only until staged).
pub(crate) fn cut_chunk(id: SeriesId, h: HeadChunk) -> CutChunk {
    let (maxt, _) = h.app.last().unwrap_or((h.app.mint(), 0.0));
    CutChunk {
        id,
        mint: h.app.mint(),
        maxt,
        first_wal: h.first_wal,
        bytes: h.app.into_bytes(),
    }
}

impl HeadChunk {
    fn stored(&self) -> Option<StoredChunk> {
        let (last_t, _) = self.app.last()?;
        Some(StoredChunk::Xor {
            mint: self.app.mint(),
            maxt: last_t,
            bytes: self.app.bytes().to_vec(),
        })
    }
}

impl ChunkSource for Head {
    fn chunks(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        // The series' lock across both: the apply stage moves a cut chunk from the open
        // chunk to `unstaged` under it.
        let open = self.series.get(id).map(MemSeries::open);
        // Unstaged chunks are older than the series' head chunk.
        for u in self
            .unstaged()
            .range((id, i64::MIN)..=(id, maxt))
            .map(|e| e.1)
        {
            let c = &u.chunk;
            if c.maxt >= mint {
                out.push(StoredChunk::Xor {
                    mint: c.mint,
                    maxt: c.maxt,
                    bytes: c.bytes.clone(),
                });
            }
        }
        let chunk = open.as_ref().and_then(|s| s.head.as_ref()?.stored());
        if let Some(c) = chunk.filter(|c| c.mint() <= maxt && c.maxt() >= mint) {
            out.push(c);
        }
        Ok(())
    }

    fn for_each_series(
        &self,
        f: &mut dyn FnMut(SeriesId, Vec<StoredChunk>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut ids: Vec<SeriesId> = self.series.ids().collect();
        ids.sort_unstable();
        for id in ids {
            let mut chunks = Vec::new();
            self.chunks(id, i64::MIN, i64::MAX, &mut chunks)?;
            if !chunks.is_empty() {
                f(id, chunks)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run appended at once cuts the same chunks as its samples appended one by one:
    /// full chunks, window ends (negative times and times near `i64::MAX` too).
    #[test]
    fn a_run_cuts_the_same_chunks_as_its_samples_one_by_one() {
        let config = StorageConfig {
            chunk_span_ms: 1_000,
            ..StorageConfig::default()
        };
        let mut x: u64 = 7;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for base in [-5_000i64, 0, 1_700_000_000_000, i64::MAX - 2_000_000] {
            let mut t = base;
            let mut times = Vec::new();
            for _ in 0..2_000 {
                // Steps from 1 ms to ~0.7 s: chunks end full and at window ends.
                t += 1 + (next() % 700) as i64;
                times.push(t);
            }
            let samples: Vec<(i64, f64)> = times.iter().map(|&t| (t, (t % 97) as f64)).collect();
            let mut one = MemSeries::new(1, Arc::from(&b"x"[..]), i64::MIN, i64::MIN);
            let mut run = MemSeries::new(1, Arc::from(&b"x"[..]), i64::MIN, i64::MIN);
            let (mut cut_one, mut cut_run) = (Vec::new(), Vec::new());
            for (i, part) in samples.chunks(37).enumerate() {
                for &(t, v) in part {
                    let one = one.open_mut();
                    cut_one.extend(append_to_head(&config, 1, one, t, v, i as u64));
                }
                let it = part.iter().copied();
                append_run_to_head(&config, 1, run.open_mut(), it, i as u64, &mut cut_run);
            }
            let key = |c: &CutChunk| (c.mint, c.maxt, c.bytes.clone(), c.first_wal);
            assert!(cut_one.len() > 10, "{} chunks cut", cut_one.len());
            assert_eq!(
                cut_one.iter().map(key).collect::<Vec<_>>(),
                cut_run.iter().map(key).collect::<Vec<_>>(),
                "base {base}"
            );
            let (one, run) = (one.open_mut(), run.open_mut());
            let head = |s: &Open| s.head.as_ref().map(|h| h.app.bytes().to_vec());
            assert_eq!(head(one), head(run));
            assert_eq!((one.mint, one.maxt), (run.mint, run.maxt));
        }
    }

    /// A head series is 144 bytes (issue 15: memory per series; 8 of them the lock that
    /// lets the apply stage run under the head's read lock); a field added here is paid by
    /// every series.
    #[test]
    fn mem_series_size() {
        assert_eq!(std::mem::size_of::<MemSeries>(), 144);
    }
}
