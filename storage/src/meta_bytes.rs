//! [`MetaBytes`]: an ingest-state key or value as a short owned part and an optional
//! shared tail, so the pending ingest state (`Inner::meta_pending`) holds no copy of a label
//! set its writer already keeps (a collector's `tot/<labels>` key and `def/` value, one
//! each per series).

use std::cmp::Ordering;
use std::sync::Arc;

/// Bytes kept inline, without an allocation.
const INLINE: usize = 22;
/// Bytes of an inline head before a shared tail.
const SHARED_HEAD: usize = 6;

/// The bytes `head ++ tail`; compared, ordered and written as those bytes, however they
/// are split. 24 bytes (a pending entry is a key, a sequence and a value: 56 bytes, was 104
/// with a `SmallVec` head): up to 22 bytes inline, a head of up to 6 bytes before a shared
/// tail, or one allocation.
#[derive(Clone, Debug)]
pub struct MetaBytes(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared {
        len: u8,
        head: [u8; SHARED_HEAD],
        tail: Arc<[u8]>,
    },
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<MetaBytes>() == 24);
const _: () = assert!(std::mem::size_of::<Option<MetaBytes>>() == 24);

impl Default for MetaBytes {
    fn default() -> Self {
        MetaBytes::new(&[])
    }
}

impl MetaBytes {
    /// `head` alone (copied).
    pub fn new(head: &[u8]) -> Self {
        if head.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..head.len()].copy_from_slice(head);
            MetaBytes(Repr::Inline {
                len: head.len() as u8,
                bytes,
            })
        } else {
            MetaBytes(Repr::Heap(head.into()))
        }
    }

    /// `head ++ tail`, sharing `tail` with the caller (copied with `head` when `head` is
    /// longer than 6 bytes).
    pub fn shared(head: &[u8], tail: &Arc<[u8]>) -> Self {
        if head.len() > SHARED_HEAD {
            return MetaBytes::from([head, tail].concat());
        }
        let mut h = [0; SHARED_HEAD];
        h[..head.len()].copy_from_slice(head);
        MetaBytes(Repr::Shared {
            len: head.len() as u8,
            head: h,
            tail: tail.clone(),
        })
    }

    pub(crate) fn parts(&self) -> [&[u8]; 2] {
        match &self.0 {
            Repr::Inline { len, bytes } => [&bytes[..*len as usize], &[]],
            Repr::Shared { len, head, tail } => [&head[..*len as usize], tail],
            Repr::Heap(b) => [b, &[]],
        }
    }

    pub fn len(&self) -> usize {
        let [h, t] = self.parts();
        h.len() + t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for p in self.parts() {
            v.extend_from_slice(p);
        }
        v
    }

    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        let [h, t] = self.parts();
        if prefix.len() <= h.len() {
            return h.starts_with(prefix);
        }
        prefix.starts_with(h) && t.starts_with(&prefix[h.len()..])
    }

    /// Orders these bytes against `other`'s.
    pub fn cmp_bytes(&self, other: &[u8]) -> Ordering {
        cmp_concat(self.parts(), [other, &[]])
    }
}

impl From<Vec<u8>> for MetaBytes {
    /// Takes the vector's allocation when it does not fit inline.
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= INLINE {
            MetaBytes::new(&v)
        } else {
            MetaBytes(Repr::Heap(v.into_boxed_slice()))
        }
    }
}

impl Ord for MetaBytes {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_concat(self.parts(), other.parts())
    }
}

impl PartialOrd for MetaBytes {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for MetaBytes {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.cmp(other) == Ordering::Equal
    }
}

impl Eq for MetaBytes {}

/// Orders `a[0] ++ a[1]` against `b[0] ++ b[1]` by comparing slices (memcmp), not bytes one
/// by one: the pending map compares keys that share long label-set prefixes.
fn cmp_concat(a: [&[u8]; 2], b: [&[u8]; 2]) -> Ordering {
    let (mut ai, mut bi) = (0, 0);
    let (mut x, mut y) = (a[0], b[0]);
    loop {
        while x.is_empty() && ai < 1 {
            ai += 1;
            x = a[ai];
        }
        while y.is_empty() && bi < 1 {
            bi += 1;
            y = b[bi];
        }
        if x.is_empty() || y.is_empty() {
            // One side has no bytes left: the shorter sorts first.
            return (!x.is_empty()).cmp(&!y.is_empty());
        }
        let n = x.len().min(y.len());
        match x[..n].cmp(&y[..n]) {
            Ordering::Equal => {
                x = &x[n..];
                y = &y[n..];
            }
            o => return o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of every pair of these byte strings orders, compares and prefixes as the
    /// whole strings do.
    #[test]
    fn any_split_behaves_like_the_concatenated_bytes() {
        let words: [&[u8]; 11] = [
            b"",
            b"t",
            b"tot/",
            b"tot/a",
            b"tot/a\xffb",
            b"tot/b",
            b"def/\x00\x05node1",
            b"tot/a\xff",
            b"\xff\x00",
            b"def/\x00\x0asim-node-01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05",
            b"def/\x00\x0asim-node-01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x06",
        ];
        let splits = |w: &[u8]| -> Vec<MetaBytes> {
            (0..=w.len())
                .map(|i| {
                    if i == w.len() {
                        MetaBytes::new(w)
                    } else {
                        MetaBytes::shared(&w[..i], &Arc::from(&w[i..]))
                    }
                })
                .chain([MetaBytes::from(w.to_vec())])
                .collect()
        };
        for a in words {
            for b in words {
                for x in splits(a) {
                    assert_eq!(x.to_vec(), a);
                    assert_eq!(x.len(), a.len());
                    assert_eq!(x.starts_with(b), a.starts_with(b), "{a:?} {b:?}");
                    for y in splits(b) {
                        assert_eq!(x.cmp(&y), a.cmp(b), "{x:?} {y:?}");
                        assert_eq!(x == y, a == b);
                        assert_eq!(x.cmp_bytes(b), a.cmp(b));
                    }
                }
            }
        }
    }
}
