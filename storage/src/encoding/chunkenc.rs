//! Gorilla-style chunk encoding, byte-compatible with Prometheus's XOR chunks
//! (`tsdb/chunkenc/xor.go`), so remote read can ship chunks from the store as they are.
//!
//! Layout: a 2-byte big-endian sample count, then a bit stream. First sample: timestamp as
//! a zigzag varint, value as 64 raw bits. Second: timestamp delta as a uvarint, value XORed
//! with the previous one. Then timestamps as delta-of-delta in buckets (`0`; `10`+14 bits;
//! `110`+17; `1110`+20; `1111`+64) and values XORed (`0` same value; `10` + meaningful bits
//! in the previous window; `11` + 5 bits leading zeros + 6 bits length + the bits).

/// Most samples in one chunk (Prometheus cuts at 120 too).
pub const MAX_SAMPLES: u16 = 120;

#[derive(Debug, Clone, Default)]
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    /// Bits still free in the last byte.
    free: u8,
}

impl BitWriter {
    /// A writer for about `bytes` bytes (a buffer that does not live on, unlike a head
    /// chunk's, so it need not grow 32 bytes at a time).
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        BitWriter {
            bytes: Vec::with_capacity(bytes),
            free: 0,
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Grows the buffer by a quarter, at least 32 bytes: a head chunk per series lives in
    /// memory, and doubling would leave a quarter of it unused on average; a chunk of
    /// ~160 bytes (counters) grows 32 bytes at a time, one of ~1 KiB (random floats) in 14
    /// steps instead of 32 reallocations (in the commit pipeline's serial apply stage).
    fn push(&mut self, b: u8) {
        if self.bytes.len() == self.bytes.capacity() {
            self.bytes.reserve_exact((self.bytes.len() / 4).max(32));
        }
        self.bytes.push(b);
    }

    fn write_bit(&mut self, bit: bool) {
        if self.free == 0 {
            self.push(0);
            self.free = 8;
        }
        if bit {
            *self.bytes.last_mut().expect("pushed above") |= 1 << (self.free - 1);
        }
        self.free -= 1;
    }

    fn write_byte(&mut self, b: u8) {
        if self.free == 0 {
            self.push(b);
            return;
        }
        *self.bytes.last_mut().expect("free > 0 means a byte exists") |= b >> (8 - self.free);
        self.push(b << self.free);
    }

    /// Writes the low `n` bits of `v`, most significant first. The last byte's used bits
    /// and the new ones go into one word, stored as 8 bytes and cut to the bytes used: no
    /// loop over bytes or bits (the serial apply stage of a commit spends most of its time
    /// here, appending samples to head chunks).
    pub(crate) fn write_bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        // Bits already used in the last byte (0 when it is full).
        let used = (8 - u32::from(self.free)) & 7;
        if used + n > 64 {
            // More than one word (n > 57): the high bits, then the low 32.
            self.write_bits(v >> 32, n - 32);
            self.write_bits(v, 32);
            return;
        }
        let mut word = (v << (64 - n)) >> used;
        if self.free > 0 {
            let last = self.bytes.pop().expect("free > 0 means a byte exists");
            word |= u64::from(last) << 56;
        }
        let len = self.bytes.len();
        if self.bytes.capacity() - len < 8 {
            self.bytes.reserve_exact((len / 4).max(32));
        }
        let total = used + n;
        self.bytes.extend_from_slice(&word.to_be_bytes());
        self.bytes.truncate(len + total.div_ceil(8) as usize);
        self.free = ((8 - total % 8) % 8) as u8;
    }
}

pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize, // bit position
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }

    fn read_bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1 == 1;
        self.pos += 1;
        Some(bit)
    }

    /// Reads `n` bits (at most 64), most significant first: the bytes holding them are
    /// loaded as one big-endian word and shifted, no loop over bits (staging decodes every
    /// cut chunk with this, and queries every chunk they read).
    pub(crate) fn read_bits(&mut self, n: u32) -> Option<u64> {
        if self.pos + n as usize > self.bytes.len() * 8 {
            return None;
        }
        if n == 0 {
            return Some(0);
        }
        // Bits of the first byte already read.
        let used = (self.pos % 8) as u32;
        if used + n > 64 {
            // More than one word (n > 57): the high bits, then the low 32.
            let high = self.read_bits(n - 32)?;
            return Some(high << 32 | self.read_bits(32)?);
        }
        let start = self.pos / 8;
        let word = match self.bytes.get(start..start + 8) {
            Some(b) => u64::from_be_bytes(b.try_into().expect("8 bytes")),
            None => {
                // Near the end: the bytes left, then zeros.
                let mut b = [0u8; 8];
                let left = &self.bytes[start..];
                b[..left.len()].copy_from_slice(left);
                u64::from_be_bytes(b)
            }
        };
        self.pos += n as usize;
        Some((word << used) >> (64 - n))
    }

    pub(crate) fn read_uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        let mut s = 0u32;
        for i in 0..10 {
            let b = self.read_bits(8)? as u8;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return None;
                }
                return Some(x | (b as u64) << s);
            }
            x |= ((b & 0x7f) as u64) << s;
            s += 7;
        }
        None
    }

    pub(crate) fn read_varint(&mut self) -> Option<i64> {
        let ux = self.read_uvarint()?;
        let x = (ux >> 1) as i64;
        Some(if ux & 1 != 0 { !x } else { x })
    }
}

pub(crate) fn put_uvarint(w: &mut BitWriter, mut x: u64) {
    while x >= 0x80 {
        w.write_byte(x as u8 | 0x80);
        x >>= 7;
    }
    w.write_byte(x as u8);
}

pub(crate) fn put_varint(w: &mut BitWriter, x: i64) {
    let ux = ((x as u64) << 1) ^ ((x >> 63) as u64);
    put_uvarint(w, ux);
}

fn bit_range(x: i64, nbits: u32) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= 1i64 << (nbits - 1)
}

/// Appends samples to a chunk. Timestamps must increase strictly; the caller checks.
#[derive(Debug, Clone)]
pub struct XorAppender {
    b: BitWriter,
    n: u16,
    t: i64,
    v: f64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
    mint: i64,
}

impl Default for XorAppender {
    fn default() -> Self {
        XorAppender::new()
    }
}

impl XorAppender {
    pub fn new() -> Self {
        Self::with_capacity(2)
    }

    /// An empty chunk with room for `bytes` bytes before its buffer grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut b = Vec::with_capacity(bytes.max(2));
        b.extend_from_slice(&[0, 0]);
        XorAppender {
            b: BitWriter { bytes: b, free: 0 },
            n: 0,
            t: 0,
            v: 0.0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
            mint: 0,
        }
    }

    pub fn len(&self) -> u16 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Time of the first sample (0 when empty).
    pub fn mint(&self) -> i64 {
        self.mint
    }

    /// Time and value of the last sample.
    pub fn last(&self) -> Option<(i64, f64)> {
        (self.n > 0).then_some((self.t, self.v))
    }

    pub fn append(&mut self, t: i64, v: f64) {
        match self.n {
            0 => {
                put_varint(&mut self.b, t);
                self.b.write_bits(v.to_bits(), 64);
                self.mint = t;
            }
            1 => {
                self.t_delta = t.wrapping_sub(self.t) as u64;
                put_uvarint(&mut self.b, self.t_delta);
                self.write_value(v);
            }
            _ => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.b.write_bit(false);
                } else if bit_range(dod, 14) {
                    // The bucket's prefix and the bits in one write.
                    self.b.write_bits(0b10 << 14 | (dod as u64 & 0x3fff), 16);
                } else if bit_range(dod, 17) {
                    self.b.write_bits(0b110 << 17 | (dod as u64 & 0x1_ffff), 20);
                } else if bit_range(dod, 20) {
                    self.b
                        .write_bits(0b1110 << 20 | (dod as u64 & 0xf_ffff), 24);
                } else {
                    self.b.write_bits(0b1111, 4);
                    self.b.write_bits(dod as u64, 64);
                }
                self.t_delta = t_delta;
                self.write_value(v);
            }
        }
        self.t = t;
        self.v = v;
        self.n += 1;
        self.b.bytes[..2].copy_from_slice(&self.n.to_be_bytes());
    }

    fn write_value(&mut self, v: f64) {
        let delta = v.to_bits() ^ self.v.to_bits();
        if delta == 0 {
            self.b.write_bit(false);
            return;
        }
        let mut leading = delta.leading_zeros() as u8;
        let trailing = delta.trailing_zeros() as u8;
        if leading >= 32 {
            leading = 31;
        }
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            // `10` and the bits in the previous window (they have no bits above it).
            let sig = 64 - self.leading as u32 - self.trailing as u32;
            let bits = delta >> self.trailing;
            if sig <= 62 {
                self.b.write_bits(0b10 << sig | bits, sig + 2);
            } else {
                self.b.write_bits(0b10, 2);
                self.b.write_bits(bits, sig);
            }
            return;
        }
        self.leading = leading;
        self.trailing = trailing;
        let sigbits = 64 - leading as u32 - trailing as u32;
        // `11`, 5 bits of leading zeros, 6 bits of length: 64 significant bits do not fit
        // in 6 bits; 0 stands for 64 (0 never occurs).
        self.b.write_bits(
            0b11 << 11 | u64::from(leading) << 6 | u64::from(sigbits & 63),
            13,
        );
        self.b.write_bits(delta >> trailing, sigbits);
    }

    /// The chunk's bytes as they are now (valid to decode at any point).
    pub fn bytes(&self) -> &[u8] {
        &self.b.bytes
    }

    /// The chunk's bytes, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.b.into_bytes()
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.b.bytes.capacity()
    }
}

/// Errors decoding a chunk.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("chunk is truncated or corrupt after {0} samples")]
pub struct ChunkError(pub u16);

/// An XOR chunk holding `samples` (strictly increasing times).
pub fn encode_all(samples: &[(i64, f64)]) -> Vec<u8> {
    let mut a = XorAppender::new();
    for &(t, v) in samples {
        a.append(t, v);
    }
    a.bytes().to_vec()
}

/// Decodes every sample of a chunk.
pub fn decode(bytes: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    let mut out = Vec::new();
    decode_into(bytes, &mut out)?;
    Ok(out)
}

/// Decodes every sample of a chunk, appending to `out`.
pub fn decode_into(bytes: &[u8], out: &mut Vec<(i64, f64)>) -> Result<(), ChunkError> {
    if bytes.len() < 2 {
        return Err(ChunkError(0));
    }
    let n = u16::from_be_bytes([bytes[0], bytes[1]]);
    let mut r = BitReader {
        bytes: &bytes[2..],
        pos: 0,
    };
    let (mut t, mut v, mut t_delta) = (0i64, 0u64, 0u64);
    let (mut leading, mut trailing) = (0u32, 0u32);
    out.reserve(n as usize);
    for i in 0..n {
        let err = || ChunkError(i);
        match i {
            0 => {
                t = r.read_varint().ok_or_else(err)?;
                v = r.read_bits(64).ok_or_else(err)?;
            }
            _ => {
                if i == 1 {
                    t_delta = r.read_uvarint().ok_or_else(err)?;
                } else {
                    let mut d = 0u8;
                    for _ in 0..4 {
                        d <<= 1;
                        if !r.read_bit().ok_or_else(err)? {
                            break;
                        }
                        d |= 1;
                    }
                    let sz = match d {
                        0b0 => 0,
                        0b10 => 14,
                        0b110 => 17,
                        0b1110 => 20,
                        _ => 64,
                    };
                    let dod = if sz == 0 {
                        0
                    } else if sz == 64 {
                        r.read_bits(64).ok_or_else(err)? as i64
                    } else {
                        let mut bits = r.read_bits(sz).ok_or_else(err)?;
                        if bits > 1 << (sz - 1) {
                            bits = bits.wrapping_sub(1 << sz);
                        }
                        bits as i64
                    };
                    t_delta = (t_delta as i64).wrapping_add(dod) as u64;
                }
                t = t.wrapping_add(t_delta as i64);
                if r.read_bit().ok_or_else(err)? {
                    if r.read_bit().ok_or_else(err)? {
                        leading = r.read_bits(5).ok_or_else(err)? as u32;
                        let mut sig = r.read_bits(6).ok_or_else(err)? as u32;
                        if sig == 0 {
                            sig = 64;
                        }
                        // The encoder never writes more than 64 bits in all; damaged
                        // bits can claim more (the fuzz target chunk_xor found this).
                        trailing = 64u32.checked_sub(leading + sig).ok_or_else(err)?;
                    }
                    let sig = 64 - leading - trailing;
                    let bits = r.read_bits(sig).ok_or_else(err)?;
                    v ^= if trailing >= 64 { 0 } else { bits << trailing };
                }
            }
        }
        out.push((t, f64::from_bits(v)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// 5,000 pseudo-random words and widths (0..=64), the same every run.
    fn words_and_widths() -> impl Iterator<Item = (u64, u32)> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..5000).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x, (x % 65) as u32)
        })
    }

    /// `write_bits` writes what writing the bits one at a time writes.
    #[test]
    fn write_bits_matches_single_bits() {
        let (mut fast, mut slow) = (BitWriter::default(), BitWriter::default());
        for (x, n) in words_and_widths() {
            fast.write_bits(x, n);
            for i in (0..n).rev() {
                slow.write_bit((x >> i) & 1 == 1);
            }
            assert_eq!(fast.free, slow.free);
        }
        assert_eq!(fast.into_bytes(), slow.into_bytes());
    }

    /// `read_bits` reads what reading the bits one at a time reads, and refuses to read
    /// past the end.
    #[test]
    fn read_bits_matches_single_bits() {
        let mut w = BitWriter::default();
        for (x, n) in words_and_widths() {
            w.write_bits(x, n);
        }
        let bytes = w.into_bytes();
        let (mut fast, mut slow) = (BitReader::new(&bytes), BitReader::new(&bytes));
        for (_, n) in words_and_widths() {
            let mut v = 0u64;
            for _ in 0..n {
                v = (v << 1) | u64::from(slow.read_bit().unwrap());
            }
            assert_eq!(fast.read_bits(n), Some(v));
            assert_eq!(fast.pos, slow.pos);
        }
        let left = (bytes.len() * 8 - fast.pos) as u32;
        assert_eq!(fast.read_bits(left + 1), None);
        assert!(fast.read_bits(left).is_some());
        assert_eq!(fast.read_bits(1), None);
        assert_eq!(fast.read_bits(0), Some(0));
    }

    use super::*;
    use crate::STALE_NAN_BITS;

    fn roundtrip(samples: &[(i64, f64)]) {
        let mut a = XorAppender::new();
        for &(t, v) in samples {
            a.append(t, v);
        }
        let got = decode(a.bytes()).unwrap();
        assert_eq!(got.len(), samples.len());
        for (g, s) in got.iter().zip(samples) {
            assert_eq!(g.0, s.0);
            assert_eq!(
                g.1.to_bits(),
                s.1.to_bits(),
                "value bits differ at t={}",
                s.0
            );
        }
    }

    #[test]
    fn random_values_and_timestamps_roundtrip() {
        use rand::{Rng, SeedableRng};
        // Seeded, so the random cases are reproducible.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        for case in 0..500 {
            let n = (rng.gen::<u64>() % 120 + 1) as usize;
            let mut t = (rng.gen::<u64>() as i64) >> (rng.gen::<u64>() % 64);
            let mut s = Vec::with_capacity(n);
            let mut v = 0.0f64;
            for _ in 0..n {
                s.push((t, v));
                let step = match case % 4 {
                    0 => 10_000,
                    1 => 10_000 + (rng.gen::<u64>() % 2000) as i64 - 1000,
                    2 => 1 + (rng.gen::<u64>() % (1 << 40)) as i64,
                    _ => 1 + (rng.gen::<u64>() % 100) as i64,
                };
                t = t.saturating_add(step);
                v = match case % 3 {
                    0 => v + (rng.gen::<u64>() % 10) as f64,
                    1 => f64::from_bits(rng.gen::<u64>()),
                    _ => (rng.gen::<u64>() % 1000) as f64 / 7.0,
                };
            }
            roundtrip(&s);
        }
    }

    #[test]
    fn adversarial_values_roundtrip() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        roundtrip(&[
            (-1_000_000, f64::NAN),
            (-999_999, stale),
            (0, f64::INFINITY),
            (1, f64::NEG_INFINITY),
            (2, -0.0),
            (3, 0.0),
            (4, f64::MIN_POSITIVE),
            (5, f64::MAX),
            (6, f64::MIN),
            (7, stale),
            (i64::MAX / 2, 1.0),
            (i64::MAX / 2 + 1, 1.0),
        ]);
        roundtrip(&[(i64::MIN / 4, 1.0), (0, 2.0), (i64::MAX / 4, 3.0)]);
        roundtrip(&[(5, 1.0)]);
        // Bucket edges of the delta-of-delta encoding.
        let mut s = vec![(0i64, 0.0), (1000, 0.0)];
        let mut t = 1000i64;
        let mut d = 1000i64;
        for dod in [
            8192i64,
            -8191,
            8193,
            -8192,
            65536,
            -65535,
            65537,
            524288,
            -524287,
            524289,
            -524288,
            1 << 40,
        ] {
            d += dod;
            t += d.max(1);
            s.push((t, 1.0));
        }
        roundtrip(&s);
    }

    #[test]
    fn compresses_regular_counters_below_two_bytes_per_sample() {
        let mut a = XorAppender::new();
        let mut v = 1_000_000.0;
        for i in 0..120 {
            a.append(1_700_000_000_000 + i * 10_000, v);
            v += (i % 5) as f64;
        }
        assert!(
            a.bytes().len() < 240,
            "{} bytes for 120 samples",
            a.bytes().len()
        );
    }

    #[test]
    fn truncated_chunks_are_errors_not_panics() {
        let mut a = XorAppender::new();
        for i in 0..50 {
            a.append(i * 1000, i as f64 * 1.5);
        }
        let b = a.bytes();
        for cut in 0..b.len() - 1 {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut} decoded");
        }
    }
}
