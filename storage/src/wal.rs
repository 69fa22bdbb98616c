//! Write-ahead records: the samples of one committed append, written in the same atomic
//! sled batch as everything else the append changed. Layout per sample: uvarint series id,
//! zigzag varint timestamp, 8 bytes value bits (big-endian).

use crate::{SeriesId, StorageError};

pub fn encode(samples: &[(SeriesId, i64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 14);
    for &(id, t, v) in samples {
        put_uvarint(&mut out, id);
        put_uvarint(&mut out, ((t as u64) << 1) ^ ((t >> 63) as u64));
        out.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    out
}

pub fn decode(mut b: &[u8]) -> Result<Vec<(SeriesId, i64, f64)>, StorageError> {
    let corrupt = || StorageError::Corrupt("WAL record is truncated".into());
    let mut out = Vec::new();
    while !b.is_empty() {
        let id = uvarint(&mut b).ok_or_else(corrupt)?;
        let zz = uvarint(&mut b).ok_or_else(corrupt)?;
        let t = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        let v: [u8; 8] = b
            .get(..8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?;
        b = &b[8..];
        out.push((id, t, f64::from_bits(u64::from_be_bytes(v))));
    }
    Ok(out)
}

fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push(x as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn uvarint(b: &mut &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for i in 0..10 {
        let byte = *b.get(i)?;
        x |= ((byte & 0x7f) as u64) << (7 * i);
        if byte < 0x80 {
            *b = &b[i + 1..];
            return Some(x);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip_and_truncation() {
        let s = vec![
            (1, -5, f64::NAN),
            (u64::MAX, i64::MIN, 1.5),
            (300, i64::MAX, -0.0),
        ];
        let b = super::encode(&s);
        let d = super::decode(&b).unwrap();
        assert_eq!(d.len(), 3);
        for (x, y) in d.iter().zip(&s) {
            assert_eq!((x.0, x.1, x.2.to_bits()), (y.0, y.1, y.2.to_bits()));
        }
        assert!(super::decode(&b[..b.len() - 1]).is_err());
    }
}
