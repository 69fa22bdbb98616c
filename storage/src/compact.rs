//! Compaction: once a staged window is over (its end is `head_idle` in the past and no head
//! chunk is left in it), `maintain` writes its series, in id order, into one window file
//! (`blocks`, `winfile`) and then deletes the staging file. Why files and not sled:
//! sled 0.34 stored immutable 16 KiB pages in 1.2-2.8x their size (docs/BENCHMARKS.md).
//!
//! Late samples (a series first seen with old timestamps) can reach a window after its
//! compaction: they are staged under the next generation (`gen`) and compacted into a file
//! of that generation; readers look at every generation of a window. When the generation
//! counts as compacted, and what happens after a crash at each step, is step 4 of the
//! durability order (`Storage::mark_durable`, storage/docs/format.md).

use crate::chunk::{ChunkSource, StoredChunk};
use crate::db::{read_lock, write_lock, Storage};
use crate::staging::{StagedWindow, StagingFile};
use crate::wincodec::SharedColumns;
use crate::winfile::{WriteSummary, Writer};
use crate::{SeriesId, StorageError};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Storage {
    /// Compacts every staged window that is over as of `now_ms`; returns how many. Takes
    /// the write lock only to pick the windows and to update the series table, so commits
    /// go on while pages are written. Callers serialize maintenance and have flushed the
    /// staging files.
    pub(crate) fn compact_windows(&self, now_ms: i64) -> Result<usize, StorageError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let due: Vec<(i64, u32, Arc<StagingFile>)> = {
            let _w = self.lock_write();
            let open_windows: std::collections::HashSet<i64> = read_lock(&inner.head)
                .series
                .values()
                .filter_map(|s| {
                    let open = s.open();
                    open.head
                        .as_ref()
                        .map(|h| h.window(cfg) * cfg.chunk_span_ms)
                })
                .collect();
            let mut w = write_lock(&inner.windows);
            w.staging
                .iter_mut()
                .filter(|((win, _), _)| {
                    win.saturating_add(cfg.chunk_span_ms)
                        .saturating_add(cfg.head_idle_ms)
                        <= now_ms
                        && !open_windows.contains(win)
                })
                .map(|((win, gen), s)| {
                    s.sealed = true;
                    (*win, *gen, s.file.clone())
                })
                .collect()
        };
        let n = due.len();
        for (i, (window, gen, db)) in due.into_iter().enumerate() {
            self.compact_window(window, gen, db)?;
            tracing::debug!(done = i + 1, of = n, "compaction progress");
        }
        Ok(n)
    }

    fn compact_window(
        &self,
        window: i64,
        gen: u32,
        staged: Arc<StagingFile>,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        let started = std::time::Instant::now();
        let bd = inner.config.block_duration_ms;
        let day = crate::blocks::day_dir(&inner.dir, window.div_euclid(bd) * bd);
        std::fs::create_dir_all(&day).map_err(|e| StorageError::Io(day.clone(), e))?;
        let pending = crate::blocks::pending_path(&inner.dir, bd, window, gen);
        let summary = compact(
            &StagedWindow(&staged),
            window,
            &pending,
            inner.config.page_bytes,
        )?;
        // Every sample in the file is covered by its series' durable mark before the
        // generation counts as compacted (the durability order, `Storage::mark_durable`).
        {
            let w = self.lock_write();
            // The log is not truncated here: pending ingest state may stay pending.
            self.mark_durable(&w, 0)?;
        }
        let path = crate::blocks::window_path(&inner.dir, bd, window, gen);
        crate::blocks::commit_pending(&pending, &path)?;
        let file = std::sync::Arc::new(crate::winfile::open(&path)?);
        {
            let mut w = write_lock(&inner.windows);
            w.files.insert((window, gen), file);
            w.staging.remove(&(window, gen));
        }
        // Readers still holding it read the unlinked file.
        crate::staging::remove_staged(staged.path())?;
        inner
            .stats
            .windows_compacted
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            window_start_ms = window,
            gen,
            series = summary.series,
            samples = summary.samples,
            pages = summary.pages,
            shared_columns = summary.shared_columns,
            bytes = summary.bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "compacted chunk window"
        );
        Ok(())
    }
}

/// The samples of a series' chunks, in time order.
fn samples_of(id: SeriesId, chunks: &[StoredChunk]) -> Result<Vec<(i64, f64)>, StorageError> {
    let mut s = Vec::new();
    for c in chunks {
        c.decode_into(&mut s)
            .map_err(|e| StorageError::Corrupt(format!("staged chunk of series {id}: {e}")))?;
    }
    Ok(s)
}

/// Writes every series of `source` (one chunk window starting at `window`) into the window
/// file `path` (fsynced and renamed into place when this returns; see `winfile`), in two
/// passes: the first counts the timestamp columns the series share, the second encodes.
/// Sees nothing of the store but the source: recording the generation as compacted is the
/// caller's, once the durability order allows it.
pub(crate) fn compact(
    source: &dyn ChunkSource,
    window: i64,
    path: &std::path::Path,
    page_bytes: usize,
) -> Result<WriteSummary, StorageError> {
    let mut shared = SharedColumns::new();
    source.for_each_series(&mut |id, cs| {
        shared.count(&samples_of(id, &cs)?);
        Ok(())
    })?;
    let mut w = Writer::create(path, window, shared, page_bytes)?;
    source.for_each_series(&mut |id, cs| {
        let s = samples_of(id, &cs)?;
        if s.is_empty() {
            return Ok(());
        }
        w.add(id, &s)
    })?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::encode_staged;
    use crate::chunkenc;

    fn samples_of_source(
        source: &dyn ChunkSource,
    ) -> std::collections::BTreeMap<SeriesId, Vec<(i64, u64)>> {
        let mut out = std::collections::BTreeMap::new();
        source
            .for_each_series(&mut |id, cs| {
                let mut s = Vec::new();
                for c in cs {
                    c.decode_into(&mut s).unwrap();
                }
                out.insert(id, s.iter().map(|x| (x.0, x.1.to_bits())).collect());
                Ok(())
            })
            .unwrap();
        out
    }

    /// Compaction sees only chunk sources: what a staged window yields, the compacted
    /// window file yields again, bit for bit (counters, floats, a stale marker, two chunks).
    #[test]
    fn compacting_a_staged_window_keeps_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let staged = StagingFile::create(&dir.path().join("s.kps")).unwrap();
        let window = 3_600_000;
        for id in 0..300u64 {
            let all: Vec<(i64, f64)> = (0..200)
                .map(|i| {
                    let t = window + i * 10_000 + (id as i64 % 7);
                    let v = match id % 3 {
                        0 => (i * 1_000 + id as i64) as f64,
                        1 => i as f64 / 3.0,
                        _ if i == 5 => f64::from_bits(crate::STALE_NAN_BITS),
                        _ => -(i as f64),
                    };
                    (t, v)
                })
                .collect();
            for part in all.chunks(120) {
                let (mint, maxt) = (part[0].0, part[part.len() - 1].0);
                let v = encode_staged(mint, maxt, &chunkenc::encode_all(part));
                staged
                    .append(std::iter::once((id, mint, v.as_slice())))
                    .unwrap();
            }
        }
        let before = samples_of_source(&StagedWindow(&staged));
        let path = dir.path().join("w.kpw");
        let summary = compact(&StagedWindow(&staged), window, &path, 16 << 10).unwrap();
        assert!(summary.pages > 1, "{summary:?}");
        let after = samples_of_source(&crate::winfile::open(&path).unwrap());
        assert_eq!(before.len(), 300);
        assert_eq!(after, before);
    }
}
