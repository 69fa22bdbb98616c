//! Staging and compaction of cut chunks.
//!
//! A cut chunk goes first into the sled database of its chunk window
//! (`staging/<window start>-<gen>/`, one value per chunk, XOR as cut). Once a window is
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

use crate::chunk::{decode_staged, StoredChunk};
use crate::chunkenc;
use crate::codec::{put_uvarint, put_varint, Reader};
use crate::db::{read_lock, write_lock, Storage};
use crate::{dense, keys, SeriesId, StorageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

const ENC_XOR: u8 = 1;
const ENC_DENSE: u8 = 2;

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
    /// Compacted generations by window start.
    pub packed: BTreeMap<i64, u32>,
}

impl Windows {
    /// Compacted windows in `[from, to]` with their generations, and the staged databases.
    pub fn snapshot(&self, from: i64, to: i64) -> (Vec<(i64, u32)>, Vec<sled::Db>) {
        if from > to {
            return (Vec::new(), Vec::new());
        }
        (
            self.packed
                .range(from..=to)
                .map(|(w, g)| (*w, *g))
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

fn corrupt(what: impl Into<String>) -> StorageError {
    StorageError::Corrupt(what.into())
}

/// Most samples in one dense chunk of a page.
const MAX_DENSE_SAMPLES: usize = 4096;

/// One series' chunks of a window in a page: `n uvarint` then n records, either
/// `1 | mint - window varint | maxt - mint uvarint | len uvarint | XOR chunk` or
/// `2 | len uvarint | dense chunk (times relative to the window)`. When every value of
/// the series in the window is an integer, its chunks are merged into dense chunks of up to
/// 4,096 samples (one frame of bit widths for the whole window); otherwise each chunk is
/// dense on its own when it can be and smaller, else kept as XOR. Returns the number of
/// dense chunks written.
fn encode_series(window: i64, chunks: &[StoredChunk], out: &mut Vec<u8>) -> usize {
    // Every chunk decoded once: its samples are `all[range]` (none if it does not decode).
    let mut all = Vec::new();
    let ranges: Vec<Option<std::ops::Range<usize>>> = chunks
        .iter()
        .map(|c| {
            let start = all.len();
            match c.decode_into(&mut all) {
                Ok(()) => Some(start..all.len()),
                Err(_) => {
                    all.truncate(start);
                    None
                }
            }
        })
        .collect();
    let merged: Option<Vec<Vec<u8>>> = if ranges.iter().all(Option::is_some) {
        all.chunks(MAX_DENSE_SAMPLES)
            .map(|part| dense::encode(part, window))
            .collect()
    } else {
        None
    };
    if let Some(parts) = merged {
        put_uvarint(out, parts.len() as u64);
        for p in &parts {
            out.push(ENC_DENSE);
            put_uvarint(out, p.len() as u64);
            out.extend_from_slice(p);
        }
        return parts.len();
    }
    let mut dense_n = 0;
    put_uvarint(out, chunks.len() as u64);
    for (c, range) in chunks.iter().zip(ranges) {
        let d = range.clone().and_then(|r| dense::encode(&all[r], window));
        let xor: std::borrow::Cow<[u8]> = match (c, &range) {
            (StoredChunk::Xor { bytes, .. }, _) => bytes.into(),
            (StoredChunk::Samples(_), Some(r)) => chunkenc::encode_all(&all[r.clone()]).into(),
            (StoredChunk::Samples(_), None) => Vec::new().into(),
        };
        match d {
            Some(b) if b.len() < xor.len() => {
                dense_n += 1;
                out.push(ENC_DENSE);
                put_uvarint(out, b.len() as u64);
                out.extend_from_slice(&b);
            }
            _ => {
                let (mint, maxt) = (c.mint(), c.maxt());
                out.push(ENC_XOR);
                put_varint(out, mint.wrapping_sub(window));
                put_uvarint(out, maxt.wrapping_sub(mint) as u64);
                put_uvarint(out, xor.len() as u64);
                out.extend_from_slice(&xor);
            }
        }
    }
    dense_n
}

fn decode_series(
    window: i64,
    mut c: Reader,
    mint: i64,
    maxt: i64,
    out: &mut Vec<StoredChunk>,
) -> Result<(), StorageError> {
    let n = c.uvarint()?;
    for _ in 0..n {
        match *c.take(1)?.first().expect("one byte") {
            ENC_XOR => {
                let cmint = window.wrapping_add(c.varint()?);
                let cmaxt = cmint.wrapping_add(c.uvarint()? as i64);
                let len = c.uvarint()? as usize;
                let bytes = c.take(len)?;
                if cmaxt >= mint && cmint <= maxt {
                    out.push(StoredChunk::Xor {
                        mint: cmint,
                        maxt: cmaxt,
                        bytes: bytes.to_vec(),
                    });
                }
            }
            ENC_DENSE => {
                let len = c.uvarint()? as usize;
                let mut s = Vec::new();
                dense::decode_into(c.take(len)?, window, &mut s)
                    .map_err(|e| corrupt(format!("dense chunk: {e}")))?;
                if s.first().is_some_and(|f| f.0 <= maxt) && s.last().is_some_and(|l| l.0 >= mint) {
                    out.push(StoredChunk::Samples(s));
                }
            }
            enc => return Err(corrupt(format!("chunk encoding {enc}"))),
        }
    }
    Ok(())
}

/// A page being filled: `last_id u64 | n uvarint | ( id - previous id uvarint | len
/// uvarint )* | series data*` (the first entry's previous id is the key's first id).
struct PageBuilder {
    ids: Vec<(SeriesId, usize)>,
    data: Vec<u8>,
}

impl PageBuilder {
    fn finish(&self) -> (SeriesId, Vec<u8>) {
        let first = self.ids[0].0;
        let last = self.ids[self.ids.len() - 1].0;
        let mut v = Vec::with_capacity(self.data.len() + 8 + self.ids.len() * 3);
        v.extend_from_slice(&last.to_be_bytes());
        put_uvarint(&mut v, self.ids.len() as u64);
        let mut prev = first;
        for (id, len) in &self.ids {
            put_uvarint(&mut v, id - prev);
            put_uvarint(&mut v, *len as u64);
            prev = *id;
        }
        v.extend_from_slice(&self.data);
        (first, v)
    }
}

/// The chunks of series `id` in a page value whose key names `first_id`.
fn read_page(
    window: i64,
    first_id: SeriesId,
    page: &[u8],
    id: SeriesId,
    mint: i64,
    maxt: i64,
    out: &mut Vec<StoredChunk>,
) -> Result<(), StorageError> {
    let last = keys::be_u64(page.get(..8).ok_or_else(|| corrupt("page header"))?)
        .ok_or_else(|| corrupt("page header"))?;
    if id > last || id < first_id {
        return Ok(());
    }
    let mut c = Reader::new(&page[8..], "page");
    let n = c.uvarint()?;
    let (mut prev, mut offset, mut found) = (first_id, 0usize, None);
    for _ in 0..n {
        let sid = prev + c.uvarint()?;
        let len = c.uvarint()? as usize;
        if sid == id {
            found = Some((offset, len));
        }
        offset += len;
        prev = sid;
    }
    if let Some((off, len)) = found {
        let data = c
            .buf
            .get(off..off + len)
            .ok_or_else(|| corrupt("page data"))?;
        decode_series(window, Reader::new(data, "page"), mint, maxt, out)?;
    }
    Ok(())
}

impl Storage {
    /// Compacted chunks of series `id` overlapping `[mint, maxt]` in `windows` (window
    /// start, generations).
    pub(crate) fn packed_chunks(
        &self,
        id: SeriesId,
        windows: Vec<(i64, u32)>,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        let bd = inner.config.block_duration_ms;
        if windows.is_empty() {
            return Ok(());
        }
        let blocks = read_lock(&inner.blocks);
        for (w, gens) in windows {
            let Some(db) = blocks.get(&w.div_euclid(bd).saturating_mul(bd)) else {
                continue;
            };
            for gen in 1..=gens {
                let hit = db
                    .range(keys::page(w, gen, 0)..=keys::page(w, gen, id))
                    .next_back();
                if let Some(kv) = hit {
                    let (k, v) = kv?;
                    let first = keys::be_u64(&k[13..]).ok_or_else(|| corrupt("page key"))?;
                    read_page(w, first, &v, id, mint, maxt, out)?;
                }
            }
        }
        Ok(())
    }

    /// The block (day) database holding `window`, opened or created.
    pub(crate) fn block_for(&self, window: i64) -> Result<sled::Db, StorageError> {
        let bd = self.inner.config.block_duration_ms;
        let start = window.div_euclid(bd) * bd;
        let mut blocks = write_lock(&self.inner.blocks);
        if let Some(b) = blocks.get(&start) {
            return Ok(b.clone());
        }
        let b = crate::db::open_block(
            &self.inner.dir.join("blocks").join(format!("{start:020}")),
            &self.inner.config,
        )?;
        blocks.insert(start, b.clone());
        Ok(b)
    }

    /// The open staging database of `window`, or a new one under the next generation.
    pub(crate) fn staging_for(&self, window: i64) -> Result<sled::Db, StorageError> {
        let mut w = write_lock(&self.inner.windows);
        let mut gen = w.packed.get(&window).copied().unwrap_or(0);
        for ((_, g), s) in w.staging.range((window, 0)..=(window, u32::MAX)) {
            if !s.sealed {
                return Ok(s.db.clone());
            }
            gen = gen.max(*g);
        }
        gen += 1;
        let db = crate::db::open_block(
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
