//! Encoding of one compacted chunk window (for example one hour) of many series.
//!
//! A shipper stamps every series of one collection cycle with the same time, so the series
//! of a node share their timestamps exactly. A window therefore stores each timestamp
//! column that more than one series uses once, in a table, and a series points into it;
//! a series whose timestamps nobody shares carries them itself. A column is stored as
//! residuals from a regular grid (first time, step) or as delta-of-delta, whichever is
//! smaller, in frame-of-reference blocks of 64.
//!
//! Values take the smallest of four modes:
//! - constant: one value, 64 bits, for every sample (idle counters, flat gauges);
//! - Rice: integers below 2^53 in magnitude, as values, differences or differences of
//!   differences, Rice-coded around each block of 64's median with the block's best `k`;
//! - sparse: integers whose differences are mostly zero (idle drop counters), as the gaps
//!   between the non-zero differences and their sizes;
//! - XOR: anything else, Gorilla's XOR of the 64 bits with the previous value, so every
//!   f64 (NaN payloads, Prometheus's stale marker, ±Inf, -0.0) comes back bit for bit.
//!
//! The measurements behind these choices are in `docs/BENCHMARKS.md` ("Candidate encodings
//! for compacted windows"); the byte layout is in `storage/docs/format.md` ("Compacted window
//! file"). Encoding is two passes over the window: [`SharedColumns::count`] sees every
//! series' timestamps first, so the second pass ([`Encoder::encode_series`]) can stream.
//! Decoding never trusts a length more than the input can hold: damaged bytes give
//! [`StorageError::Corrupt`], never a panic or an allocation larger than a fixed multiple of
//! the input.

use crate::chunkenc::{put_uvarint, put_varint, BitReader, BitWriter};
use crate::codec::{self, Reader};
use crate::{SeriesId, StorageError};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Samples in one frame-of-reference or Rice block.
const BLOCK: usize = 64;
/// A Rice quotient this large is written as this many one bits and then the 64 raw bits.
const ESCAPE: u64 = 40;
/// Smallest magnitude that is not stored as an integer (2^53).
const MAX_INT: f64 = 9_007_199_254_740_992.0;
/// Fewest bits one frame-of-reference block takes (a 1-byte varint and the 7-bit width):
/// bounds the samples a column of a given size can claim.
const MIN_BLOCK_BITS: usize = 15;

/// One series of a window: its id and samples `(t ms, value)`.
pub type WindowSeries = (SeriesId, Vec<(i64, f64)>);

const MODE_CONST: u64 = 0;
const MODE_RICE: u64 = 1;
const MODE_SPARSE: u64 = 2;
const MODE_XOR: u64 = 3;

fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("compacted window: {what}"))
}

fn zz(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzz(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn uvarint_len(mut x: u64) -> u64 {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

fn as_int(v: f64) -> Option<i64> {
    if v.is_nan() || v.abs() >= MAX_INT || v.trunc() != v {
        return None;
    }
    let i = v as i64;
    // -0.0 is an integer by value but not by bits.
    ((i as f64).to_bits() == v.to_bits()).then_some(i)
}

fn diffs(xs: &[i64]) -> Vec<i64> {
    xs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect()
}

/// Running sums of `d` starting at `first` (the inverse of [`diffs`]), wrapping like it.
fn integrate(first: i64, d: &[i64]) -> Vec<i64> {
    let mut out = Vec::with_capacity(d.len() + 1);
    let mut x = first;
    out.push(x);
    for &dx in d {
        x = x.wrapping_add(dx);
        out.push(x);
    }
    out
}

// ---- frame-of-reference blocks (timestamp columns) ----

/// Minimum and bit width of a block; the span of i64s always fits 64 bits.
fn frame(b: &[i64]) -> (i64, u32) {
    let min = b.iter().copied().min().unwrap_or(0);
    let max = b.iter().copied().max().unwrap_or(0);
    (min, 64 - (max.wrapping_sub(min) as u64).leading_zeros())
}

fn for_bits(xs: &[i64]) -> u64 {
    xs.chunks(BLOCK)
        .map(|b| {
            let (min, width) = frame(b);
            uvarint_len(zz(min)) * 8 + 7 + width as u64 * b.len() as u64
        })
        .sum()
}

/// Per block of 64: `min varint | width 7 bits | width bits per value (x - min)`.
fn put_for(w: &mut BitWriter, xs: &[i64]) {
    for b in xs.chunks(BLOCK) {
        let (min, width) = frame(b);
        put_varint(w, min);
        w.write_bits(width as u64, 7);
        for &x in b {
            w.write_bits(x.wrapping_sub(min) as u64, width);
        }
    }
}

fn read_for(r: &mut BitReader, n: usize) -> Result<Vec<i64>, StorageError> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let min = r.read_varint().ok_or_else(|| corrupt("timestamp block"))?;
        let width = r.read_bits(7).ok_or_else(|| corrupt("timestamp block"))? as u32;
        if width > 64 {
            return Err(corrupt(format!("timestamp block width {width}")));
        }
        for _ in 0..(n - out.len()).min(BLOCK) {
            let x = r
                .read_bits(width)
                .ok_or_else(|| corrupt("timestamp block is truncated"))?;
            out.push(min.wrapping_add(x as i64));
        }
    }
    Ok(out)
}

// ---- timestamp columns ----

/// One column: `n uvarint | [n >= 1] t0 - base varint | [n >= 2] kind 1 bit: 0 grid
/// (step varint, for-blocks of t[k] - t0 - k*step for k >= 1) or 1 delta-of-delta (t1 - t0
/// varint, for-blocks of the n - 2 dods)`. All arithmetic wraps, so any i64s round-trip.
fn put_column(w: &mut BitWriter, base: i64, ts: &[i64]) {
    put_uvarint(w, ts.len() as u64);
    let Some(&t0) = ts.first() else { return };
    put_varint(w, t0.wrapping_sub(base));
    if ts.len() < 2 {
        return;
    }
    let last = ts[ts.len() - 1];
    let span = last as i128 - t0 as i128;
    let n1 = (ts.len() - 1) as i128;
    let step = ((2 * span + n1).div_euclid(2 * n1)) as i64; // rounded mean interval
    let grid: Vec<i64> = ts[1..]
        .iter()
        .zip(1i64..)
        .map(|(t, k)| t.wrapping_sub(t0).wrapping_sub(step.wrapping_mul(k)))
        .collect();
    let d = diffs(ts);
    let dod = diffs(&d);
    let grid_bits = uvarint_len(zz(step)) * 8 + for_bits(&grid);
    let dod_bits = uvarint_len(zz(d[0])) * 8 + for_bits(&dod);
    if grid_bits <= dod_bits {
        w.write_bits(0, 1);
        put_varint(w, step);
        put_for(w, &grid);
    } else {
        w.write_bits(1, 1);
        put_varint(w, d[0]);
        put_for(w, &dod);
    }
}

fn read_column(r: &mut BitReader, base: i64, bits: usize) -> Result<Vec<i64>, StorageError> {
    let err = || corrupt("timestamp column is truncated");
    let n = r.read_uvarint().ok_or_else(err)? as usize;
    // A block of 64 samples takes at least MIN_BLOCK_BITS bits.
    if n > 2 + BLOCK * (bits / MIN_BLOCK_BITS + 1) {
        return Err(corrupt(format!(
            "a timestamp column of {n} samples in {bits} bits"
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let t0 = base.wrapping_add(r.read_varint().ok_or_else(err)?);
    if n == 1 {
        return Ok(vec![t0]);
    }
    if r.read_bits(1).ok_or_else(err)? == 0 {
        let step = r.read_varint().ok_or_else(err)?;
        let grid = read_for(r, n - 1)?;
        let mut out = Vec::with_capacity(n);
        out.push(t0);
        out.extend(
            grid.iter()
                .zip(1i64..)
                .map(|(g, k)| t0.wrapping_add(step.wrapping_mul(k)).wrapping_add(*g)),
        );
        Ok(out)
    } else {
        let d0 = r.read_varint().ok_or_else(err)?;
        let dod = read_for(r, n - 2)?;
        Ok(integrate(t0, &integrate(d0, &dod)))
    }
}

fn column_bytes(base: i64, ts: &[i64]) -> Vec<u8> {
    let mut w = BitWriter::with_capacity(16 + ts.len() / 2);
    put_column(&mut w, base, ts);
    w.into_bytes()
}

// ---- values ----

/// Rice parameter minimizing a block's bits, searched near log2 of the mean.
fn rice_k(zs: &[u64]) -> u32 {
    let cost = |k: u32| -> u64 {
        zs.iter()
            .map(|z| match z >> k {
                q if q >= ESCAPE => ESCAPE + 64,
                q => q + 1 + k as u64,
            })
            .sum()
    };
    let mean = zs.iter().map(|&z| z as u128).sum::<u128>() / zs.len().max(1) as u128;
    let guess = 127 - (mean | 1).leading_zeros();
    (guess.saturating_sub(2)..=(guess + 1).min(63))
        .min_by_key(|&k| (cost(k), k))
        .unwrap_or(0)
}

/// Per block of 64: `median varint | k 6 bits | per value z = zigzag(x - median): z >> k as
/// that many 1 bits and a 0, then the k low bits` (quotients of 40 and more: 40 one bits
/// and the 64 bits of z).
fn put_rice(w: &mut BitWriter, xs: &[i64]) {
    for b in xs.chunks(BLOCK) {
        let mut sorted = b.to_vec();
        sorted.sort_unstable();
        let med = sorted[sorted.len() / 2];
        let zs: Vec<u64> = b.iter().map(|x| zz(x.wrapping_sub(med))).collect();
        let k = rice_k(&zs);
        put_varint(w, med);
        w.write_bits(k as u64, 6);
        for z in zs {
            let q = z >> k;
            if q >= ESCAPE {
                w.write_bits((1 << ESCAPE) - 1, ESCAPE as u32);
                w.write_bits(z, 64);
            } else {
                w.write_bits(((1u64 << q) - 1) << 1, q as u32 + 1);
                w.write_bits(z & ((1u64 << k) - 1), k);
            }
        }
    }
}

fn read_rice(r: &mut BitReader, n: usize) -> Result<Vec<i64>, StorageError> {
    let err = || corrupt("Rice-coded values are truncated");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let med = r.read_varint().ok_or_else(err)?;
        let k = r.read_bits(6).ok_or_else(err)? as u32;
        for _ in 0..(n - out.len()).min(BLOCK) {
            let mut q = 0;
            let z = loop {
                if q == ESCAPE {
                    break r.read_bits(64).ok_or_else(err)?;
                }
                if r.read_bits(1).ok_or_else(err)? == 0 {
                    break (q << k) | r.read_bits(k).ok_or_else(err)?;
                }
                q += 1;
            };
            out.push(unzz(z).wrapping_add(med));
        }
    }
    Ok(out)
}

/// `order 2 bits | [order >= 1] v0 varint | [order 2] v1 - v0 varint | Rice blocks of the
/// order's differences`.
fn put_rice_values(w: &mut BitWriter, vs: &[i64], order: usize) {
    w.write_bits(order as u64, 2);
    let mut xs = vs.to_vec();
    for _ in 0..order {
        put_varint(w, xs[0]);
        xs = diffs(&xs);
    }
    put_rice(w, &xs);
}

fn read_rice_values(r: &mut BitReader, n: usize) -> Result<Vec<i64>, StorageError> {
    let err = || corrupt("Rice-coded values are truncated");
    let order = r.read_bits(2).ok_or_else(err)? as usize;
    if order > 2 || order >= n.max(1) {
        return Err(corrupt(format!("difference order {order} for {n} values")));
    }
    let heads = (0..order)
        .map(|_| r.read_varint().ok_or_else(err))
        .collect::<Result<Vec<_>, _>>()?;
    let mut xs = read_rice(r, n - order)?;
    for &h in heads.iter().rev() {
        xs = integrate(h, &xs);
    }
    Ok(xs)
}

/// `v0 varint | count uvarint | count x (gap to the previous non-zero difference uvarint |
/// difference varint)`.
fn put_sparse(w: &mut BitWriter, vs: &[i64]) {
    let d = diffs(vs);
    put_varint(w, vs[0]);
    put_uvarint(w, d.iter().filter(|&&x| x != 0).count() as u64);
    let mut prev = 0;
    for (i, &x) in d.iter().enumerate().filter(|(_, x)| **x != 0) {
        put_uvarint(w, (i + 1 - prev) as u64);
        put_varint(w, x);
        prev = i + 1;
    }
}

fn read_sparse(r: &mut BitReader, n: usize) -> Result<Vec<i64>, StorageError> {
    let err = || corrupt("sparse values are truncated");
    let v0 = r.read_varint().ok_or_else(err)?;
    let count = r.read_uvarint().ok_or_else(err)?;
    if count >= n as u64 {
        return Err(corrupt(format!("{count} changes in {n} values")));
    }
    let mut d = vec![0i64; n - 1];
    let mut at = 0u64;
    for _ in 0..count {
        let gap = r.read_uvarint().ok_or_else(err)?;
        at = at.saturating_add(gap);
        if gap == 0 || at > d.len() as u64 {
            return Err(corrupt("sparse values: a change outside the series"));
        }
        d[at as usize - 1] = r.read_varint().ok_or_else(err)?;
    }
    Ok(integrate(v0, &d))
}

/// Gorilla's value encoding (as in Prometheus's XOR chunk, without timestamps): the first
/// value's 64 bits, then per value `0` (same bits) or `1 0` + the XOR's meaningful bits in
/// the previous window or `1 1` + leading zeros (5 bits) + length (6 bits, 0 for 64) + bits.
fn put_xor(w: &mut BitWriter, vs: &[f64]) {
    let mut prev = vs[0].to_bits();
    w.write_bits(prev, 64);
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for v in &vs[1..] {
        let x = v.to_bits() ^ prev;
        prev = v.to_bits();
        if x == 0 {
            w.write_bits(0, 1);
            continue;
        }
        let (l, t) = (x.leading_zeros().min(31), x.trailing_zeros());
        if lead != u32::MAX && l >= lead && t >= trail {
            w.write_bits(0b10, 2);
            w.write_bits(x >> trail, 64 - lead - trail);
        } else {
            (lead, trail) = (l, t);
            let sig = 64 - l - t;
            w.write_bits(0b11, 2);
            w.write_bits(l as u64, 5);
            w.write_bits((sig & 63) as u64, 6);
            w.write_bits(x >> t, sig);
        }
    }
}

fn read_xor(r: &mut BitReader, n: usize) -> Result<Vec<f64>, StorageError> {
    let err = || corrupt("XOR values are truncated");
    let mut v = r.read_bits(64).ok_or_else(err)?;
    let mut out = Vec::with_capacity(n);
    out.push(f64::from_bits(v));
    let (mut lead, mut trail) = (0u32, 0u32);
    let mut windowed = false;
    for _ in 1..n {
        if r.read_bits(1).ok_or_else(err)? == 1 {
            if r.read_bits(1).ok_or_else(err)? == 1 {
                lead = r.read_bits(5).ok_or_else(err)? as u32;
                let sig = match r.read_bits(6).ok_or_else(err)? as u32 {
                    0 => 64,
                    s => s,
                };
                if lead + sig > 64 {
                    return Err(corrupt("XOR values: a window wider than 64 bits"));
                }
                trail = 64 - lead - sig;
                windowed = true;
            } else if !windowed {
                return Err(corrupt("XOR values: a reused window before the first"));
            }
            let bits = r.read_bits(64 - lead - trail).ok_or_else(err)?;
            v ^= bits << trail;
        }
        out.push(f64::from_bits(v));
    }
    Ok(out)
}

/// The values' payload in the smallest mode that holds them exactly: `(mode, bytes)`.
fn encode_values(vs: &[f64]) -> (u64, Vec<u8>) {
    let bytes = |f: &dyn Fn(&mut BitWriter)| {
        let mut w = BitWriter::with_capacity(16 + vs.len() * 2);
        f(&mut w);
        w.into_bytes()
    };
    if vs.iter().all(|v| v.to_bits() == vs[0].to_bits()) {
        return (MODE_CONST, bytes(&|w| w.write_bits(vs[0].to_bits(), 64)));
    }
    let mut best = (MODE_XOR, bytes(&|w| put_xor(w, vs)));
    if let Some(ints) = vs.iter().map(|&v| as_int(v)).collect::<Option<Vec<i64>>>() {
        let mut candidates = vec![(MODE_SPARSE, bytes(&|w| put_sparse(w, &ints)))];
        for order in (0..3).filter(|&o| o < ints.len()) {
            candidates.push((MODE_RICE, bytes(&|w| put_rice_values(w, &ints, order))));
        }
        for c in candidates {
            if c.1.len() < best.1.len() {
                best = c;
            }
        }
    }
    best
}

fn decode_values(mode: u64, payload: &[u8], n: usize) -> Result<Vec<f64>, StorageError> {
    let r = &mut BitReader::new(payload);
    let ints = |xs: Vec<i64>| xs.into_iter().map(|x| x as f64).collect();
    match mode {
        _ if n == 0 => Ok(Vec::new()),
        MODE_CONST => {
            let v = r.read_bits(64).ok_or_else(|| corrupt("constant value"))?;
            Ok(vec![f64::from_bits(v); n])
        }
        MODE_RICE => read_rice_values(r, n).map(ints),
        MODE_SPARSE => read_sparse(r, n).map(ints),
        _ => read_xor(r, n),
    }
}

// ---- encoding a window ----

fn ts_hash(samples: &[(i64, f64)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    samples.len().hash(&mut h);
    for s in samples {
        s.0.hash(&mut h);
    }
    h.finish()
}

/// The first pass over a window: which timestamp columns more than one series uses.
#[derive(Debug, Default)]
pub struct SharedColumns {
    /// Series per hash of their timestamps (a collision only puts a column into the table
    /// that one series uses: the table is keyed by the column's exact bytes).
    counts: HashMap<u64, u32>,
}

impl SharedColumns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes one series' timestamps; call it for every series the window will hold.
    pub fn count(&mut self, samples: &[(i64, f64)]) {
        *self.counts.entry(ts_hash(samples)).or_default() += 1;
    }
}

/// The second pass: encodes series records against a growing timestamp table.
#[derive(Debug)]
pub struct Encoder {
    base: i64,
    shared: SharedColumns,
    index: HashMap<Vec<u8>, u64>,
    table: Vec<Vec<u8>>,
}

impl Encoder {
    /// An encoder for the window starting at `base` (ms), with the counts of the first pass.
    pub fn new(base: i64, shared: SharedColumns) -> Self {
        Encoder {
            base,
            shared,
            index: HashMap::new(),
            table: Vec::new(),
        }
    }

    /// One series' record: `head uvarint (column ref << 2 | value mode) | [ref 0] column
    /// len uvarint, column | value payload to the end`. Column ref 0 means the series' own
    /// timestamps follow; k > 0 is the table's column k - 1.
    pub fn encode_series(&mut self, samples: &[(i64, f64)]) -> Vec<u8> {
        let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
        let col = column_bytes(self.base, &ts);
        let mut out = Vec::with_capacity(col.len() + samples.len() * 2 + 8);
        let shared = self
            .shared
            .counts
            .get(&ts_hash(samples))
            .is_some_and(|&c| c > 1);
        let col_ref = if shared {
            let next = self.table.len() as u64;
            let k = *self.index.entry(col.clone()).or_insert(next);
            if k == next {
                self.table.push(col.clone());
            }
            k + 1
        } else {
            0
        };
        let (mode, payload) = if samples.is_empty() {
            (MODE_CONST, Vec::new())
        } else {
            encode_values(&samples.iter().map(|s| s.1).collect::<Vec<_>>())
        };
        codec::put_uvarint(&mut out, col_ref << 2 | mode);
        if col_ref == 0 {
            codec::put_uvarint(&mut out, col.len() as u64);
            out.extend_from_slice(&col);
        }
        out.extend_from_slice(&payload);
        out
    }

    /// The timestamp table of the columns used so far: `n uvarint | n x len uvarint |
    /// columns`.
    pub fn table(&self) -> Vec<u8> {
        let mut out = Vec::new();
        codec::put_uvarint(&mut out, self.table.len() as u64);
        for c in &self.table {
            codec::put_uvarint(&mut out, c.len() as u64);
        }
        for c in &self.table {
            out.extend_from_slice(c);
        }
        out
    }
}

/// A directory and the records of a run of series: `n uvarint | n x (id - previous id
/// uvarint (the first: the id) | record len uvarint) | records`. Ids must increase.
pub fn section(records: &[(SeriesId, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::put_uvarint(&mut out, records.len() as u64);
    let mut prev = 0;
    for (i, (id, r)) in records.iter().enumerate() {
        assert!(i == 0 || *id > prev, "series ids must increase");
        codec::put_uvarint(&mut out, id - prev);
        codec::put_uvarint(&mut out, r.len() as u64);
        prev = *id;
    }
    for (_, r) in records {
        out.extend_from_slice(r);
    }
    out
}

/// Encodes a whole window into one self-contained value: `base i64 | table len uvarint |
/// table | section`. `series` must be sorted by id, each series' samples in time order
/// (the codec would round-trip any order; the store never holds another).
///
/// Panics if the ids do not increase: that is a bug in the caller, not bad data.
pub fn encode(base: i64, series: &[WindowSeries]) -> Vec<u8> {
    let mut shared = SharedColumns::new();
    for (_, s) in series {
        shared.count(s);
    }
    let mut enc = Encoder::new(base, shared);
    let records: Vec<(SeriesId, Vec<u8>)> = series
        .iter()
        .map(|(id, s)| (*id, enc.encode_series(s)))
        .collect();
    let table = enc.table();
    let mut out = base.to_be_bytes().to_vec();
    codec::put_uvarint(&mut out, table.len() as u64);
    out.extend_from_slice(&table);
    out.extend_from_slice(&section(&records));
    out
}

// ---- decoding ----

/// A parsed timestamp table; columns are decoded on demand.
#[derive(Debug)]
pub struct Table<'a> {
    base: i64,
    columns: Vec<&'a [u8]>,
}

impl<'a> Table<'a> {
    /// Parses the table of the window starting at `base` (the bytes [`Encoder::table`] made).
    pub fn parse(base: i64, bytes: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = Reader::new(bytes, "timestamp table");
        let n = r.uvarint()?;
        if n > bytes.len() as u64 {
            return Err(corrupt(format!(
                "{n} timestamp columns in {} bytes",
                bytes.len()
            )));
        }
        let lens = (0..n)
            .map(|_| r.uvarint())
            .collect::<Result<Vec<u64>, _>>()?;
        let columns = lens
            .into_iter()
            .map(|len| r.take(usize::try_from(len).unwrap_or(usize::MAX)))
            .collect::<Result<Vec<_>, _>>()?;
        if !r.buf.is_empty() {
            return Err(corrupt("bytes after the timestamp table"));
        }
        Ok(Table { base, columns })
    }

    /// Every column, decoded.
    pub fn decode_columns(&self) -> Result<Vec<Vec<i64>>, StorageError> {
        (0..self.columns.len() as u64)
            .map(|k| self.column(k))
            .collect()
    }

    /// Columns in the table.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    fn column(&self, k: u64) -> Result<Vec<i64>, StorageError> {
        let bytes = usize::try_from(k)
            .ok()
            .and_then(|k| self.columns.get(k))
            .ok_or_else(|| corrupt(format!("timestamp column {k} is not in the table")))?;
        read_column(&mut BitReader::new(bytes), self.base, bytes.len() * 8)
    }
}

/// Decodes one series record (from [`Encoder::encode_series`]) against its window's table.
pub fn decode_record(table: &Table, record: &[u8]) -> Result<Vec<(i64, f64)>, StorageError> {
    decode_record_with(table.base, record, |k| table.column(k))
}

/// Decodes one series record against the window's timestamp columns, already decoded
/// ([`Table::decode_columns`]; readers of many series keep them).
pub fn decode_record_in(
    base: i64,
    columns: &[Vec<i64>],
    record: &[u8],
) -> Result<Vec<(i64, f64)>, StorageError> {
    decode_record_with(base, record, |k| {
        usize::try_from(k)
            .ok()
            .and_then(|k| columns.get(k))
            .cloned()
            .ok_or_else(|| corrupt(format!("timestamp column {k} is not in the table")))
    })
}

fn decode_record_with(
    base: i64,
    record: &[u8],
    column: impl Fn(u64) -> Result<Vec<i64>, StorageError>,
) -> Result<Vec<(i64, f64)>, StorageError> {
    let mut r = Reader::new(record, "series record");
    let head = r.uvarint()?;
    let ts = match head >> 2 {
        0 => {
            let len = usize::try_from(r.uvarint()?).unwrap_or(usize::MAX);
            let col = r.take(len)?;
            read_column(&mut BitReader::new(col), base, col.len() * 8)?
        }
        k => column(k - 1)?,
    };
    let vs = decode_values(head & 3, r.buf, ts.len())?;
    Ok(ts.into_iter().zip(vs).collect())
}

/// The directory of a [`section`]: `(id, record)` in id order.
pub fn parse_section(bytes: &[u8]) -> Result<Vec<(SeriesId, &[u8])>, StorageError> {
    let mut r = Reader::new(bytes, "series directory");
    let n = r.uvarint()?;
    // Every entry takes two bytes at least.
    if n > bytes.len() as u64 / 2 {
        return Err(corrupt(format!("{n} series in {} bytes", bytes.len())));
    }
    let mut entries = Vec::with_capacity(n as usize);
    let mut id = 0u64;
    for i in 0..n {
        let delta = r.uvarint()?;
        if i > 0 && delta == 0 {
            return Err(corrupt("series ids do not increase"));
        }
        id = id
            .checked_add(delta)
            .ok_or_else(|| corrupt("series id overflows"))?;
        entries.push((id, r.uvarint()?));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (id, len) in entries {
        out.push((id, r.take(usize::try_from(len).unwrap_or(usize::MAX))?));
    }
    if !r.buf.is_empty() {
        return Err(corrupt("bytes after the last series record"));
    }
    Ok(out)
}

/// Base, table and section of a window from [`encode`].
fn split(bytes: &[u8]) -> Result<(Table<'_>, &[u8]), StorageError> {
    let mut r = Reader::new(bytes, "compacted window");
    let base = r.u64()? as i64;
    let len = usize::try_from(r.uvarint()?).unwrap_or(usize::MAX);
    let table = Table::parse(base, r.take(len)?)?;
    Ok((table, r.buf))
}

/// The samples of series `id` in a window from [`encode`], decoding no other series;
/// `None` when the window does not hold it.
pub fn decode_series(bytes: &[u8], id: SeriesId) -> Result<Option<Vec<(i64, f64)>>, StorageError> {
    let (table, section) = split(bytes)?;
    let entries = parse_section(section)?;
    match entries.binary_search_by_key(&id, |e| e.0) {
        Ok(i) => decode_record(&table, entries[i].1).map(Some),
        Err(_) => Ok(None),
    }
}

/// Every series of a window from [`encode`], in id order.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<WindowSeries>, StorageError> {
    let (table, section) = split(bytes)?;
    parse_section(section)?
        .into_iter()
        .map(|(id, rec)| Ok((id, decode_record(&table, rec)?)))
        .collect()
}

/// Windows of test data for this module's and `winfile`'s tests.
#[cfg(test)]
pub(crate) mod testdata {
    use super::{WindowSeries, MAX_INT};
    use crate::{SeriesId, STALE_NAN_BITS};
    use rand::rngs::StdRng;
    use rand::Rng;

    pub const HOUR: i64 = 3_600_000;

    /// A normal variate (Box-Muller).
    fn normal(rng: &mut StdRng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Timestamps of a series: `n` steps of 10 s after `base` with `jitter` ms of delay.
    fn stepped(rng: &mut StdRng, base: i64, n: usize, jitter: i64) -> Vec<i64> {
        (0..n as i64)
            .map(|k| base.wrapping_add(k * 10_000 + rng.gen_range(0..=jitter)))
            .collect()
    }

    /// Shaped like a node shipper's hour: `nodes` nodes whose series share timestamps
    /// (0..=9 ms late), packet and byte counters with noisy rates, idle drop counters with
    /// bursts, slow gauges; ids `first_id + 3 * i`.
    pub fn realistic(
        rng: &mut StdRng,
        base: i64,
        series: usize,
        nodes: usize,
        first_id: SeriesId,
    ) -> Vec<WindowSeries> {
        let columns: Vec<Vec<i64>> = (0..nodes).map(|_| stepped(rng, base, 360, 9)).collect();
        (0..series)
            .map(|i| {
                let ts = &columns[i % nodes];
                let mut v = rng.gen_range(0..1u64 << 36) as f64;
                let mut rate = rng.gen_range(100.0f64..5_000.0);
                let mut burst = false;
                let s = ts
                    .iter()
                    .map(|&t| {
                        match i % 5 {
                            0..=2 => {
                                let scale = if i % 5 == 2 { 100.0 } else { 1.0 };
                                rate *= (0.05 * normal(rng)).exp();
                                v += (scale * rate * (1.0 + 0.25 * normal(rng))).round().max(0.0);
                            }
                            3 => {
                                burst = rng.gen_bool(if burst { 0.5 } else { 0.01 });
                                if burst {
                                    v += rng.gen_range(1..=500) as f64;
                                }
                            }
                            _ => v = (v + (2.0 * normal(rng)).round()).max(0.0),
                        }
                        (t, v)
                    })
                    .collect();
                (first_id + 3 * i as u64, s)
            })
            .collect()
    }

    /// A value no codec mode but XOR holds, or that tests a mode's edge.
    fn odd_value(rng: &mut StdRng) -> f64 {
        match rng.gen_range(0..10) {
            0 => f64::from_bits(STALE_NAN_BITS),
            1 => f64::from_bits(0x7ff8_0000_0000_0000 | rng.gen_range(1..1u64 << 51)),
            2 => f64::from_bits(0xfff0_0000_0000_0001 | rng.gen::<u64>() & 0xf_ffff),
            3 => f64::INFINITY,
            4 => f64::NEG_INFINITY,
            5 => -0.0,
            6 => MAX_INT - 1.0,
            7 => -(MAX_INT - 1.0),
            8 => MAX_INT,
            _ => f64::from_bits(rng.gen_range(1..1u64 << 52)), // subnormal
        }
    }

    /// Every kind of series the store may hold: shared and own timestamps, extreme times,
    /// single samples, integer counters and gauges of every size, idle counters,
    /// constants, random bit patterns and special floats; ids increasing with gaps.
    pub fn adversarial(rng: &mut StdRng, base: i64, series: usize) -> Vec<WindowSeries> {
        let shared: Vec<Vec<i64>> = (0..7).map(|_| stepped(rng, base, 360, 9)).collect();
        let mut id = rng.gen_range(0..1_000u64);
        (0..series)
            .map(|i| {
                id += rng.gen_range(1..1_000);
                let n = match rng.gen_range(0..10) {
                    0 => 1,
                    1 => rng.gen_range(2..5),
                    _ => rng.gen_range(5..400),
                };
                let ts: Vec<i64> = match i % 7 {
                    0 | 1 => shared[rng.gen_range(0..shared.len())].clone(),
                    2 => stepped(rng, base, n, 9_999),
                    3 => (0..n as i64)
                        .map(|k| base.wrapping_add(k * 15_000))
                        .collect(),
                    4 => {
                        let mut t = rng.gen_range(i64::MIN..i64::MIN / 2);
                        (0..n)
                            .map(|_| {
                                t = t.saturating_add(rng.gen_range(1..=i64::MAX / 400));
                                t
                            })
                            .collect()
                    }
                    5 => {
                        let mut ts = vec![i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX];
                        ts.truncate(n.min(6));
                        ts
                    }
                    _ => {
                        let mut t = base;
                        (0..n)
                            .map(|_| {
                                let bits = rng.gen_range(1..40);
                                t = t.wrapping_add(rng.gen_range(1..1 << bits));
                                t
                            })
                            .collect()
                    }
                };
                let kind = rng.gen_range(0..10);
                let mut v: f64 = match kind {
                    0..=2 => {
                        let bits = rng.gen_range(1..52);
                        rng.gen_range(0..1i64 << bits) as f64
                    }
                    _ => rng.gen_range(-1e6..1e6),
                };
                let s = ts
                    .into_iter()
                    .map(|t| {
                        v = match kind {
                            0 => v + rng.gen_range(0..5) as f64,
                            1 => {
                                let bits = rng.gen_range(1..40);
                                v + rng.gen_range(0..1u64 << bits) as f64
                            }
                            2 if rng.gen_bool(0.02) => v + rng.gen_range(1..500) as f64,
                            2 => v,
                            3 => (v + rng.gen_range(-3..=3) as f64)
                                .clamp(-MAX_INT + 1.0, MAX_INT - 1.0),
                            4 => 42.0,
                            5 => f64::from_bits(rng.gen()),
                            6 => odd_value(rng),
                            7 if rng.gen_bool(0.1) => odd_value(rng),
                            7 => rng.gen_range(0..1000) as f64,
                            8 => v + rng.gen_range(0.0..1000.0),
                            _ => rng.gen_range(-1e6..1e6),
                        };
                        if v.is_finite() && v.abs() >= MAX_INT * 4.0 {
                            v = 0.0;
                        }
                        (t, v)
                    })
                    .collect();
                (id, s)
            })
            .collect()
    }

    /// Whether two windows hold the same samples, bit for bit.
    pub fn same(a: &[WindowSeries], b: &[WindowSeries]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && same_samples(&x.1, &y.1))
    }

    pub fn same_samples(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    /// A small window of mixed series for corruption tests.
    pub fn small(rng: &mut StdRng, base: i64) -> Vec<WindowSeries> {
        let mut w = realistic(rng, base, 10, 3, 5);
        for s in &mut w {
            s.1.truncate(24);
        }
        w.push((1_000, vec![(base + 7, f64::from_bits(STALE_NAN_BITS))]));
        w.push((
            1_001,
            (0..20)
                .map(|k| (base + k * 999 + k * k, k as f64 * 0.1))
                .collect(),
        ));
        w.push((1_002, (0..20).map(|k| (base + k * 10_000, -0.0)).collect()));
        w
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::{self, same, same_samples, HOUR};
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn mode_of(record: &[u8]) -> u64 {
        Reader::new(record, "test").uvarint().unwrap() & 3
    }

    #[test]
    fn random_windows_round_trip_bit_exactly() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0001);
        for round in 0..6 {
            let base = match round {
                0 => 0,
                1 => i64::MIN,
                2 => i64::MAX - HOUR,
                _ => rng.gen_range(0..2_000_000_000_000 / HOUR) * HOUR,
            };
            let w = testdata::adversarial(&mut rng, base, 700);
            let bytes = encode(base, &w);
            assert!(same(&decode_all(&bytes).unwrap(), &w), "round {round}");
            for (id, s) in w.iter().step_by(7) {
                let got = decode_series(&bytes, *id).unwrap().expect("present");
                assert!(same_samples(&got, s), "round {round} series {id}");
            }
        }
    }

    #[test]
    fn absent_series_are_none() {
        let mut rng = StdRng::seed_from_u64(2);
        let w = testdata::realistic(&mut rng, 0, 50, 5, 10);
        let bytes = encode(0, &w);
        for id in [0, 9, 11, 12, 10 + 3 * 50, u64::MAX] {
            assert_eq!(decode_series(&bytes, id).unwrap(), None, "id {id}");
        }
        assert_eq!(decode_all(&encode(0, &[])).unwrap(), vec![]);
    }

    #[test]
    fn single_samples_and_extreme_timestamps_round_trip() {
        let stale = f64::from_bits(crate::STALE_NAN_BITS);
        let w: Vec<WindowSeries> = vec![
            (0, vec![]),
            (1, vec![(i64::MIN, 1.0)]),
            (2, vec![(i64::MAX, stale)]),
            (3, vec![(i64::MIN, -0.0), (i64::MAX, f64::NAN)]),
            (4, vec![(i64::MIN, 1.0), (0, 2.0), (i64::MAX, 3.0)]),
            (5, vec![(i64::MAX, 1.0), (i64::MIN, 2.0)]), // not in time order: still exact
            (
                6,
                vec![
                    (-1, MAX_INT - 1.0),
                    (0, -(MAX_INT - 1.0)),
                    (1, MAX_INT - 1.0),
                ],
            ),
            (u64::MAX, vec![(5, f64::INFINITY), (6, f64::NEG_INFINITY)]),
        ];
        for base in [0, i64::MIN, i64::MAX, -HOUR] {
            assert!(
                same(&decode_all(&encode(base, &w)).unwrap(), &w),
                "base {base}"
            );
        }
    }

    #[test]
    fn each_value_mode_is_chosen_where_it_is_smallest() {
        let ts: Vec<i64> = (0..360).map(|k| k * 10_000).collect();
        let series =
            |f: &dyn Fn(i64) -> f64| ts.iter().map(|&t| (t, f(t / 10_000))).collect::<Vec<_>>();
        let mut enc = Encoder::new(0, SharedColumns::new());
        let mut mode = |s: &[(i64, f64)]| mode_of(&enc.encode_series(s));
        assert_eq!(mode(&series(&|_| f64::NAN)), MODE_CONST);
        assert_eq!(mode(&series(&|_| 7.0)), MODE_CONST);
        assert_eq!(mode(&series(&|k| (k * 1000 + k % 7) as f64)), MODE_RICE);
        assert_eq!(
            mode(&series(&|k| if k < 100 { 3.0 } else { 250.0 })),
            MODE_SPARSE
        );
        assert_eq!(mode(&series(&|k| (k as f64).sqrt())), MODE_XOR);
        assert_eq!(
            mode(&series(&|k| if k == 9 { -0.0 } else { 1.0 })),
            MODE_XOR
        );
    }

    #[test]
    fn series_of_a_node_share_one_timestamp_column() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut w = testdata::realistic(&mut rng, 0, 200, 10, 0);
        // One series with timestamps of its own stays out of the table.
        w.push((10_000, vec![(1, 1.0), (2, 2.0)]));
        let mut shared = SharedColumns::new();
        for (_, s) in &w {
            shared.count(s);
        }
        let mut enc = Encoder::new(0, shared);
        for (_, s) in &w {
            enc.encode_series(s);
        }
        assert_eq!(Table::parse(0, &enc.table()).unwrap().len(), 10);
    }

    #[test]
    fn realistic_data_takes_little_more_than_a_byte_per_sample() {
        // Its values alone carry about 0.98 B/sample of information (docs/BENCHMARKS.md).
        let mut rng = StdRng::seed_from_u64(4);
        let w = testdata::realistic(&mut rng, 0, 2_000, 100, 0);
        let n: usize = w.iter().map(|s| s.1.len()).sum();
        let per_sample = encode(0, &w).len() as f64 / n as f64;
        assert!(per_sample < 1.25, "{per_sample:.3} B/sample");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut rng = StdRng::seed_from_u64(5);
        let w = testdata::small(&mut rng, 1_700_000_000_000);
        let bytes = encode(1_700_000_000_000, &w);
        for cut in 0..bytes.len() {
            assert!(decode_all(&bytes[..cut]).is_err(), "cut at {cut}");
            for (id, _) in &w {
                assert!(decode_series(&bytes[..cut], *id).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn damaged_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(6);
        let w = testdata::small(&mut rng, 0);
        let bytes = encode(0, &w);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 0x80 >> (bit % 8);
            let _ = decode_all(&b);
            for (id, _) in &w {
                let _ = decode_series(&b, *id);
            }
        }
        for len in 0..200 {
            let garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode_all(&garbage);
            let _ = decode_series(&garbage, rng.gen_range(0..20));
        }
    }
}
