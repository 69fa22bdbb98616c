//! Byte-level helpers shared by the write-ahead log and compacted pages: LEB128 varints
//! (zigzag for signed) and a reader over a byte slice that reports truncation as
//! corruption of the named thing.

use crate::StorageError;

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push(x as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, x: i64) {
    put_uvarint(out, ((x as u64) << 1) ^ ((x >> 63) as u64));
}

/// Reads from the front of `buf`; errors name `what` ("WAL record", "page").
pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.buf.len() < n {
            return Err(StorageError::Corrupt(format!("{} is truncated", self.what)));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A u32 length, then that many bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn uvarint(&mut self) -> Result<u64, StorageError> {
        let mut x = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            x |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Ok(x);
            }
        }
        Err(StorageError::Corrupt(format!(
            "{}: varint too long",
            self.what
        )))
    }

    pub fn varint(&mut self) -> Result<i64, StorageError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
}
