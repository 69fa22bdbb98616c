//! Chunks as the store reads them, and the one codec of a staged chunk's sled value.

use crate::chunkenc::{self, ChunkError};
use crate::querier::RawChunk;
use crate::{dense, keys, SeriesId, StorageError};

/// A chunk as read: XOR bytes (staged, head, or kept as XOR by compaction), or the samples
/// of a dense chunk (decoded once, when its page was read).
#[derive(Debug, Clone)]
pub(crate) enum StoredChunk {
    Xor {
        mint: i64,
        maxt: i64,
        bytes: Vec<u8>,
    },
    Samples(Vec<(i64, f64)>),
}

impl StoredChunk {
    pub fn maxt(&self) -> i64 {
        match self {
            StoredChunk::Xor { maxt, .. } => *maxt,
            StoredChunk::Samples(s) => s.last().map_or(i64::MIN, |x| x.0),
        }
    }

    pub fn mint(&self) -> i64 {
        match self {
            StoredChunk::Xor { mint, .. } => *mint,
            StoredChunk::Samples(s) => s.first().map_or(i64::MIN, |x| x.0),
        }
    }

    pub fn decode_into(&self, out: &mut Vec<(i64, f64)>) -> Result<(), ChunkError> {
        match self {
            StoredChunk::Xor { bytes, .. } => chunkenc::decode_into(bytes, out),
            StoredChunk::Samples(s) => {
                out.extend_from_slice(s);
                Ok(())
            }
        }
    }

    /// The chunk in Prometheus's XOR encoding, cut at 120 samples like Prometheus's
    /// (dense chunks are re-encoded).
    pub fn into_raw(self, out: &mut Vec<RawChunk>) {
        match self {
            StoredChunk::Xor { mint, maxt, bytes } => out.push(RawChunk { mint, maxt, bytes }),
            StoredChunk::Samples(s) => {
                for part in s.chunks(chunkenc::MAX_SAMPLES as usize) {
                    out.push(RawChunk {
                        mint: part[0].0,
                        maxt: part[part.len() - 1].0,
                        bytes: chunkenc::encode_all(part),
                    });
                }
            }
        }
    }
}

/// Where a series' chunks are read from: the head, a staged window or a compacted window.
/// The querier merges the sources of a range; compaction reads a staged window through
/// [`ChunkSource::for_each_series`] and never sees the store.
pub(crate) trait ChunkSource {
    /// Appends the chunks of series `id` that overlap `[mint, maxt]` to `out`, in time
    /// order (a chunk may hold samples outside the range; readers filter).
    fn chunks(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError>;

    /// Calls `f` with each series' chunks (in time order), series in id order.
    fn for_each_series(
        &self,
        f: &mut dyn FnMut(SeriesId, Vec<StoredChunk>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>;
}

/// Tag after `maxt` of a staged value holding a dense chunk. An XOR chunk begins with its
/// u16 sample count, whose first byte is 0 (chunks hold at most 120 samples), so the two
/// never clash.
const STAGED_DENSE: u8 = 2;

/// The sled value of a chunk cut into staging (key `C id mint`): `maxt i64 BE | XOR chunk`,
/// or `maxt i64 BE | 2 | dense chunk (times relative to mint)` when every value is an
/// integer below 2^53 and the dense form is smaller (it is for most counters).
pub(crate) fn encode_staged(mint: i64, maxt: i64, xor: &[u8]) -> Vec<u8> {
    let mut samples = Vec::new();
    let dense = chunkenc::decode_into(xor, &mut samples)
        .ok()
        .and_then(|()| dense::encode(&samples, mint))
        .filter(|d| d.len() + 1 < xor.len());
    let body = dense.as_deref().unwrap_or(xor);
    let mut v = Vec::with_capacity(9 + body.len());
    v.extend_from_slice(&maxt.to_be_bytes());
    if dense.is_some() {
        v.push(STAGED_DENSE);
    }
    v.extend_from_slice(body);
    v
}

/// Series id and chunk of a staged key and value (see [`encode_staged`]).
pub(crate) fn decode_staged(
    key: &[u8],
    value: &[u8],
) -> Result<(SeriesId, StoredChunk), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(what.into());
    let (id, mint) = keys::parse_chunk(key).ok_or_else(|| corrupt("staged chunk key"))?;
    let maxt = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| corrupt("staged chunk value"))?;
    let body = &value[8..];
    if body.first() == Some(&STAGED_DENSE) {
        let mut s = Vec::new();
        dense::decode_into(&body[1..], mint, &mut s).map_err(|e| {
            StorageError::Corrupt(format!("staged dense chunk of series {id}: {e}"))
        })?;
        return Ok((id, StoredChunk::Samples(s)));
    }
    Ok((
        id,
        StoredChunk::Xor {
            mint,
            maxt,
            bytes: body.to_vec(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integer chunks are staged dense, others as XOR; both read back bit for bit.
    #[test]
    fn staged_values_round_trip() {
        let key = keys::chunk(7, 1_000);
        for samples in [
            (0..120)
                .map(|i| (1_000 + i * 10_000, (i * 1_234) as f64))
                .collect::<Vec<_>>(),
            (0..120)
                .map(|i| (1_000 + i * 10_000, i as f64 * 0.1))
                .collect(),
            vec![(1_000, f64::from_bits(crate::STALE_NAN_BITS))],
        ] {
            let xor = chunkenc::encode_all(&samples);
            let maxt = samples.last().unwrap().0;
            let v = encode_staged(1_000, maxt, &xor);
            let (id, c) = decode_staged(&key, &v).unwrap();
            assert_eq!(id, 7);
            assert_eq!((c.mint(), c.maxt()), (1_000, maxt));
            let mut back = Vec::new();
            c.decode_into(&mut back).unwrap();
            let bits =
                |s: &[(i64, f64)]| s.iter().map(|x| (x.0, x.1.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&samples));
        }
        let counter: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_000 + i * 10_000, (i * 1_234) as f64))
            .collect();
        let v = encode_staged(1_000, 0, &chunkenc::encode_all(&counter));
        assert_eq!(v[8], STAGED_DENSE, "counters are staged dense");
        assert!(decode_staged(&key, &v[..5]).is_err());
        assert!(decode_staged(&key[..5], &v).is_err());
    }
}
