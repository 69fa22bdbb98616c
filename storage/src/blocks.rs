//! Compacted windows: pages of many series' chunks (dense, or XOR where values are not
//! integers) in a sled database per day (`blocks/<day start>/`, keys `K window gen
//! first-id`, and `G window` for the generations compacted). Byte layout:
//! `storage/docs/format.md`.

use crate::chunk::{ChunkSource, StoredChunk};
use crate::chunkenc;
use crate::codec::{put_uvarint, put_varint, Reader};
use crate::db::{open_retrying, read_lock, write_lock, Storage, StorageConfig};
use crate::{dense, keys, SeriesId, StorageError};
use std::path::Path;

const ENC_XOR: u8 = 1;
const ENC_DENSE: u8 = 2;

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
pub(crate) fn encode_series(window: i64, chunks: &[StoredChunk], out: &mut Vec<u8>) -> usize {
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
pub(crate) struct PageBuilder {
    pub ids: Vec<(SeriesId, usize)>,
    pub data: Vec<u8>,
}

impl PageBuilder {
    pub fn finish(&self) -> (SeriesId, Vec<u8>) {
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

/// A series in a page: its id and the range of its data.
type PageEntry = (SeriesId, std::ops::Range<usize>);

/// The directory of a page value whose key names `first_id`: each series' id and the
/// range of its data in the returned slice.
fn page_entries(first_id: SeriesId, page: &[u8]) -> Result<(Vec<PageEntry>, &[u8]), StorageError> {
    let mut c = Reader::new(page.get(8..).ok_or_else(|| corrupt("page header"))?, "page");
    let n = c.uvarint()?;
    let mut entries = Vec::new();
    let (mut prev, mut offset) = (first_id, 0usize);
    for _ in 0..n {
        let sid = prev
            .checked_add(c.uvarint()?)
            .ok_or_else(|| corrupt("page directory"))?;
        let len = c.uvarint()? as usize;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| corrupt("page directory"))?;
        entries.push((sid, offset..end));
        offset = end;
        prev = sid;
    }
    if offset > c.buf.len() {
        return Err(corrupt("page data"));
    }
    Ok((entries, c.buf))
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
    let (entries, data) = page_entries(first_id, page)?;
    if let Some((_, r)) = entries.into_iter().find(|(sid, _)| *sid == id) {
        decode_series(window, Reader::new(&data[r], "page"), mint, maxt, out)?;
    }
    Ok(())
}

/// The compacted generations `1..=gens` of one window, in its day's database, as a chunk
/// source.
pub(crate) struct CompactedWindow<'a> {
    pub db: &'a sled::Db,
    pub window: i64,
    pub gens: u32,
}

impl ChunkSource for CompactedWindow<'_> {
    fn chunks(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        let w = self.window;
        for gen in 1..=self.gens {
            let hit = self
                .db
                .range(keys::page(w, gen, 0)..=keys::page(w, gen, id))
                .next_back();
            if let Some(kv) = hit {
                let (k, v) = kv?;
                let first = keys::be_u64(&k[13..]).ok_or_else(|| corrupt("page key"))?;
                read_page(w, first, &v, id, mint, maxt, out)?;
            }
        }
        Ok(())
    }

    fn for_each_series(
        &self,
        f: &mut dyn FnMut(SeriesId, Vec<StoredChunk>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut all: std::collections::BTreeMap<SeriesId, Vec<StoredChunk>> = Default::default();
        for gen in 1..=self.gens {
            let prefix = &keys::page(self.window, gen, 0)[..13];
            for kv in self.db.scan_prefix(prefix) {
                let (k, v) = kv?;
                let first = keys::be_u64(&k[13..]).ok_or_else(|| corrupt("page key"))?;
                let (entries, data) = page_entries(first, &v)?;
                for (id, r) in entries {
                    let out = all.entry(id).or_default();
                    decode_series(
                        self.window,
                        Reader::new(&data[r], "page"),
                        i64::MIN,
                        i64::MAX,
                        out,
                    )?;
                }
            }
        }
        for (id, mut cs) in all {
            cs.sort_by_key(StoredChunk::mint);
            f(id, cs)?;
        }
        Ok(())
    }
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
        for (window, gens) in windows {
            if let Some(db) = blocks.get(&window.div_euclid(bd).saturating_mul(bd)) {
                CompactedWindow { db, window, gens }.chunks(id, mint, maxt, out)?;
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
        let b = open_block(
            &self.inner.dir.join("blocks").join(format!("{start:020}")),
            &self.inner.config,
        )?;
        blocks.insert(start, b.clone());
        Ok(b)
    }
}

pub(crate) fn open_block(path: &Path, config: &StorageConfig) -> Result<sled::Db, StorageError> {
    open_retrying(
        sled::Config::new()
            .path(path)
            .cache_capacity(config.block_cache_capacity_bytes)
            .flush_every_ms(None)
            .use_compression(true),
    )
}
