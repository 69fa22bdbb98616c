//! Key layouts (see `storage/docs/format.md`). Integers are big-endian; timestamps have
//! their sign bit flipped so that byte order is time order.

use crate::SeriesId;

/// Layout 1 kept a key per series; its presence means an older data directory.
pub const LABELS_BY_ID: u8 = b'I';
pub const SERIES_GROUP: u8 = b'S';

/// Series per `S` group value.
pub const GROUP_BITS: u32 = 10;
pub const POSTING: u8 = b'P';
pub const META: u8 = b'M';
pub const CHUNK: u8 = b'C';

pub fn ts(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn ts_from(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.try_into().ok()?) ^ (1 << 63)) as i64)
}

pub fn with_prefix(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// `S group` (group = id >> GROUP_BITS): first and last persisted time of its series.
pub fn series_group(group: u64) -> Vec<u8> {
    with_prefix(SERIES_GROUP, &[&group.to_be_bytes()])
}

/// `P name 0xff value 0xff` (value: roaring bitmap of series ids).
pub fn posting(name: &str, value: &str) -> Vec<u8> {
    with_prefix(
        POSTING,
        &[name.as_bytes(), &[0xff], value.as_bytes(), &[0xff]],
    )
}

pub fn meta(k: &[u8]) -> Vec<u8> {
    with_prefix(META, &[k])
}

pub fn chunk(id: SeriesId, mint: i64) -> Vec<u8> {
    with_prefix(CHUNK, &[&id.to_be_bytes(), &ts(mint)])
}

/// Series id and start time of a `C id mint` key.
pub fn parse_chunk(k: &[u8]) -> Option<(SeriesId, i64)> {
    if k.len() != 17 || k[0] != CHUNK {
        return None;
    }
    Some((be_u64(&k[1..9])?, ts_from(&k[9..17])?))
}

pub fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Name and value of a posting key.
pub fn split_posting(k: &[u8]) -> Option<(&str, &str)> {
    let rest = k.strip_prefix(&[POSTING])?.strip_suffix(&[0xff])?;
    let i = rest.iter().position(|&b| b == 0xff)?;
    Some((
        std::str::from_utf8(&rest[..i]).ok()?,
        std::str::from_utf8(&rest[i + 1..]).ok()?,
    ))
}
