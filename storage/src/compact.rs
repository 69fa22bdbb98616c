//! Staging and compaction of cut chunks.
//!
//! A cut chunk goes first into the sled database of its chunk window
//! (`staging/`, see `staging`; one value per chunk, dense or XOR). Once a window is
//! over (its end is `head_idle` in the past and no head chunk is left in it), `maintain`
//! compacts it: the window's chunks, series by series in id order, are packed into pages
//! of about `page_bytes` in the sled database of its day (`blocks/<day start>/`), each
//! chunk dense-encoded when its values are integers ([`crate::dense`]) and kept as XOR
//! otherwise; then the staging directory is deleted.
//!
//! Why: sled 0.34 costs about 56 bytes per value on top of the value and cleans its log only
//! below 50 % live data, so a value per 120-sample chunk made 1.31 bytes of XOR per sample
//! into 2.4 on disk (measured); a few large values per window do not pay either.
//!
//! Late samples (a series first seen with old timestamps) can reach a window after its
//! compaction: they are staged under the next generation (`gen`) and compacted again into
//! pages of that generation; readers look at every generation of a window. A crash
//! between writing the pages and deleting the staging directory is resolved on open: the
//! block's `G window` says which generations are compacted, and a staging directory of one
//! of them is deleted.

use crate::blocks::{encode_series, PageBuilder};
use crate::chunk::{decode_staged, StoredChunk};
use crate::db::{read_lock, write_lock, Storage};
use crate::staging::staging_dir;
use crate::{keys, SeriesId, StorageError};
use std::sync::atomic::Ordering;

impl Storage {
    /// Compacts every staged window that is over as of `now_ms`; returns how many. Takes
    /// the write lock only to pick the windows and to update the series table, so commits
    /// go on while pages are written. Callers serialize maintenance and have flushed the
    /// staging databases.
    pub(crate) fn compact_windows(&self, now_ms: i64) -> Result<usize, StorageError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let due: Vec<(i64, u32, sled::Db)> = {
            let _w = inner.write.lock().unwrap_or_else(|e| e.into_inner());
            let open_windows: std::collections::HashSet<i64> = read_lock(&inner.head)
                .series
                .values()
                .filter_map(|s| s.head.as_ref().map(|h| h.window * cfg.chunk_span_ms))
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
                    (*win, *gen, s.db.clone())
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

    fn compact_window(&self, window: i64, gen: u32, staged: sled::Db) -> Result<(), StorageError> {
        let inner = &self.inner;
        let started = std::time::Instant::now();
        let mut c = Compactor {
            window,
            gen,
            page_bytes: inner.config.page_bytes,
            block: self.block_for(window)?,
            page: PageBuilder {
                ids: Vec::new(),
                data: Vec::new(),
            },
            pages: 0,
            chunks: 0,
            dense: 0,
            bytes_in: 0,
            bytes_out: 0,
        };
        // Pages of this generation left by a compaction the process did not finish (the
        // staged window may have grown since, so they need not line up with the new ones).
        let prefix = &keys::page(window, gen, 0)[..13];
        for kv in c.block.scan_prefix(prefix) {
            let (k, _) = kv?;
            c.block.remove(k)?;
        }
        // Staged keys are `C id mint`: one series after another, in time order.
        let mut current: Option<(SeriesId, Vec<StoredChunk>)> = None;
        for kv in staged.iter() {
            let (k, v) = kv?;
            let (id, chunk) = decode_staged(&k, &v)?;
            match &mut current {
                Some((cid, cs)) if *cid == id => cs.push(chunk),
                _ => {
                    if let Some((cid, cs)) = current.take() {
                        c.add_series(cid, &cs)?;
                    }
                    current = Some((id, vec![chunk]));
                }
            }
        }
        if let Some((cid, cs)) = current.take() {
            c.add_series(cid, &cs)?;
        }
        c.flush_page()?;
        c.block.flush()?;
        // Every chunk in the pages is covered by its series' durable mark before the
        // generation counts as compacted (the durability order, `Storage::mark_durable`).
        {
            let w = inner.write.lock().unwrap_or_else(|e| e.into_inner());
            self.mark_durable(&w)?;
        }
        c.block
            .insert(keys::packed_gens(window), &gen.to_be_bytes())?;
        c.block.flush()?;
        {
            let mut w = write_lock(&inner.windows);
            w.packed.insert(window, gen);
            w.staging.remove(&(window, gen));
        }
        drop(staged);
        let dir = staging_dir(&inner.dir, window, gen);
        std::fs::remove_dir_all(&dir).map_err(|e| StorageError::Io(dir.clone(), e))?;
        inner
            .stats
            .windows_compacted
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            window_start_ms = window,
            gen,
            chunks = c.chunks,
            dense_chunks = c.dense,
            pages = c.pages,
            xor_bytes = c.bytes_in,
            page_bytes = c.bytes_out,
            took_ms = started.elapsed().as_millis() as u64,
            "compacted chunk window"
        );
        Ok(())
    }
}

/// Packs one window's series into pages.
struct Compactor {
    window: i64,
    gen: u32,
    page_bytes: usize,
    block: sled::Db,
    page: PageBuilder,
    pages: usize,
    chunks: usize,
    dense: usize,
    bytes_in: usize,
    bytes_out: usize,
}

impl Compactor {
    fn add_series(&mut self, id: SeriesId, cs: &[StoredChunk]) -> Result<(), StorageError> {
        let before = self.page.data.len();
        self.dense += encode_series(self.window, cs, &mut self.page.data);
        self.page.ids.push((id, self.page.data.len() - before));
        self.chunks += cs.len();
        self.bytes_in += cs.iter().map(StoredChunk::stored_len).sum::<usize>();
        if self.page.data.len() >= self.page_bytes {
            self.flush_page()?;
        }
        Ok(())
    }

    fn flush_page(&mut self) -> Result<(), StorageError> {
        if self.page.ids.is_empty() {
            return Ok(());
        }
        let (first, v) = self.page.finish();
        self.bytes_out += v.len();
        self.block
            .insert(keys::page(self.window, self.gen, first), v)?;
        self.pages += 1;
        self.page.ids.clear();
        self.page.data.clear();
        Ok(())
    }
}
