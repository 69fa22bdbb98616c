//! Staging: cut chunks, one sled value each (`C id mint`, see `chunk`), in a sled database
//! per chunk window and generation (`staging/<window start>-<gen>/`), unflushed until
//! `Storage::mark_durable`. Late samples (a series first seen with old timestamps) can
//! reach a window after its compaction: they are staged under the next generation.

use crate::blocks::Files;
use crate::chunk::{decode_staged, ChunkSource, StoredChunk};
use crate::db::{corrupt, read_lock, write_lock, Storage};
use crate::head::{CutChunk, Head};
use crate::winfile::WindowFile;
use crate::{keys, SeriesId, StorageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The staging database of one chunk window and generation.
pub(crate) struct Staging {
    pub db: sled::Db,
    /// Being compacted: new chunks of the window go to the next generation.
    pub sealed: bool,
}

/// Staged and compacted windows, under one lock so that a reader sees a generation either
/// staged or compacted, never both or neither.
#[derive(Default)]
pub(crate) struct Windows {
    /// Staged chunk databases by (window start, generation).
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

    /// Compacted window files and staged databases of the windows in `[from, to]`.
    pub fn snapshot(&self, from: i64, to: i64) -> (Vec<Arc<WindowFile>>, Vec<sled::Db>) {
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
                .map(|(_, s)| s.db.clone())
                .collect(),
        )
    }
}

pub(crate) fn staging_dir(root: &Path, window: i64, gen: u32) -> PathBuf {
    root.join("staging").join(format!("{window:020}-{gen}"))
}

/// `(window, gen)` of a staging directory name.
pub(crate) fn parse_staging_name(name: &str) -> Option<(i64, u32)> {
    let (w, g) = name.rsplit_once('-')?;
    Some((w.parse().ok()?, g.parse().ok()?))
}

/// One staged window and generation as a chunk source.
pub(crate) struct StagedWindow<'a>(pub &'a sled::Db);

impl ChunkSource for StagedWindow<'_> {
    fn chunks(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        // One window per database: every chunk of `id` in it starts within the window.
        for kv in self
            .0
            .range(keys::chunk(id, i64::MIN)..=keys::chunk(id, maxt))
        {
            let (k, v) = kv?;
            let (_, c) = decode_staged(&k, &v)?;
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
        // Keys are `C id mint`: one series after another, in time order.
        let mut current: Option<(SeriesId, Vec<StoredChunk>)> = None;
        for kv in self.0.iter() {
            let (k, v) = kv?;
            let (id, chunk) = decode_staged(&k, &v)?;
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
    /// The open staging database of `window`, or a new one under the next generation.
    pub(crate) fn staging_for(&self, window: i64) -> Result<sled::Db, StorageError> {
        let mut w = write_lock(&self.inner.windows);
        let mut gen = w.compacted_gens(window);
        for ((_, g), s) in w.staging.range((window, 0)..=(window, u32::MAX)) {
            if !s.sealed {
                return Ok(s.db.clone());
            }
            gen = gen.max(*g);
        }
        gen += 1;
        let db = crate::blocks::open_block(
            &staging_dir(&self.inner.dir, window, gen),
            &self.inner.config,
        )?;
        w.staging.insert(
            (window, gen),
            Staging {
                db: db.clone(),
                sealed: false,
            },
        );
        Ok(db)
    }

    /// Writes cut chunks into their windows' staging databases (not flushed: the
    /// write-ahead records still hold their samples until `maintain` flushes and truncates).
    pub(crate) fn write_chunks(&self, cut: Vec<CutChunk>) -> Result<(), StorageError> {
        if cut.is_empty() {
            return Ok(());
        }
        let span = self.inner.config.chunk_span_ms;
        let n = cut.len() as u64;
        // By window, in key order, in batches of 256 (sled keeps a big batch in memory many
        // times over; one insert at a time was 50 µs a chunk).
        let mut by_window: BTreeMap<i64, Vec<CutChunk>> = BTreeMap::new();
        for c in cut {
            by_window
                .entry(c.mint.div_euclid(span) * span)
                .or_default()
                .push(c);
        }
        for (window, mut chunks) in by_window {
            let db = self.staging_for(window)?;
            chunks.sort_unstable_by_key(|c| (c.id, c.mint));
            for part in chunks.chunks(256) {
                let mut b = sled::Batch::default();
                for c in part {
                    b.insert(
                        keys::chunk(c.id, c.mint),
                        crate::chunk::encode_staged(c.mint, c.maxt, &c.bytes),
                    );
                }
                db.apply_batch(b)?;
            }
        }
        self.inner.stats.chunks_cut.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the staged chunks durable.
    pub(crate) fn flush_staging(&self) -> Result<(), StorageError> {
        for b in read_lock(&self.inner.windows).staging.values() {
            b.db.flush()?;
        }
        Ok(())
    }
}

/// Removes, at open, every staged chunk that begins after its series' durable mark (or
/// belongs to no series the table knows): such a chunk was cut after the last
/// [`Storage::mark_durable`], so nothing says the chunks before it reached the disk too
/// (each staging database is its own sled file, flushed only by `mark_durable`), and the
/// log, which is not truncated past the mark, still holds all of its samples. Replay then
/// cuts them again. A chunk at or before the mark was fsynced before the mark was written.
pub(crate) fn discard_undurable_chunks(
    staging: &BTreeMap<(i64, u32), Staging>,
    head: &Head,
) -> Result<(), StorageError> {
    let mut discarded = 0usize;
    for st in staging.values() {
        let mut doomed = Vec::new();
        for kv in st.db.iter() {
            let (k, _) = kv?;
            let (id, mint) = keys::parse_chunk(&k).ok_or_else(|| corrupt("chunk key"))?;
            let mark = head.series.get(&id).map_or(i64::MIN, |s| s.durable_maxt);
            if mint > mark {
                doomed.push(k);
            }
        }
        discarded += doomed.len();
        for part in doomed.chunks(256) {
            let mut b = sled::Batch::default();
            for k in part {
                b.remove(k.clone());
            }
            st.db.apply_batch(b)?;
        }
    }
    if discarded > 0 {
        tracing::info!(
            chunks = discarded,
            "discarded staged chunks cut after the last durable mark; the log replays their samples"
        );
    }
    Ok(())
}
