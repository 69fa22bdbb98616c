//! [`PendingMap`]: the ingest-state changes not yet in sled (`Inner::meta_pending`), newest
//! per key, ordered by key for prefix scans (a collector loads a shipper's `def/` keys by
//! prefix).
//!
//! A sorted `Vec` and a small `BTreeMap` of keys not in it, merged into it when the map
//! holds more than an eighth of the entries (or 1,024). An update of a key already in the
//! vector (a counter total, every push) is written in place. A `BTreeMap` of every entry
//! took ~124 bytes an entry at its fill (node slack, edges); the vector takes the entry's
//! 56 bytes.

use crate::meta_bytes::MetaBytes;
use std::collections::BTreeMap;
use std::ops::Bound;

/// A pending change: the sequence of the log record that carries it and the value (`None`:
/// removed).
pub(crate) type PendingMeta = (u64, Option<MetaBytes>);

/// Entries the map holds before it is merged into the vector, at least.
const MIN_RECENT: usize = 1024;

#[derive(Default)]
pub(crate) struct PendingMap {
    /// Sorted by key, no key twice.
    sorted: Vec<(MetaBytes, PendingMeta)>,
    /// Keys not in `sorted`.
    recent: BTreeMap<MetaBytes, PendingMeta>,
}

impl PendingMap {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    fn position(&self, key: &[u8]) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(k, _)| k.cmp_bytes(key))
    }

    pub fn get(&self, key: &[u8]) -> Option<&PendingMeta> {
        match self.position(key) {
            Ok(i) => Some(&self.sorted[i].1),
            Err(_) => self.recent.get(&MetaBytes::new(key)),
        }
    }

    /// Sets `key`'s pending change, unless the key has one of a later sequence (commits
    /// made durable by one fsync insert in any order).
    pub fn insert(&mut self, key: MetaBytes, value: PendingMeta) {
        let found = self.sorted.binary_search_by(|(k, _)| k.cmp(&key)).ok();
        let old = match found {
            Some(i) => Some(&mut self.sorted[i].1),
            None => self.recent.get_mut(&key),
        };
        match old {
            Some(old) => {
                if old.0 <= value.0 {
                    *old = value;
                }
            }
            None => {
                self.recent.insert(key, value);
                if self.recent.len() > MIN_RECENT.max(self.sorted.len() / 8) {
                    self.merge();
                }
            }
        }
    }

    /// Moves `recent` into `sorted`, from the back, without a second vector.
    fn merge(&mut self) {
        let mut recent: Vec<_> = std::mem::take(&mut self.recent).into_iter().collect();
        if recent.is_empty() {
            return;
        }
        let n = self.sorted.len();
        self.sorted.reserve_exact(recent.len());
        self.sorted
            .resize_with(n + recent.len(), || (MetaBytes::default(), (0, None)));
        // Slots `i..k` hold placeholders, as many as `recent` has entries left.
        let (mut i, mut k) = (n, n + recent.len());
        while let Some((key, v)) = recent.pop() {
            while i > 0 && self.sorted[i - 1].0 > key {
                self.sorted.swap(i - 1, k - 1);
                i -= 1;
                k -= 1;
            }
            self.sorted[k - 1] = (key, v);
            k -= 1;
        }
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a MetaBytes, &'a PendingMeta)> + 'a {
        let start = self
            .sorted
            .partition_point(|(k, _)| k.cmp_bytes(prefix).is_lt());
        let from_sorted = self.sorted[start..]
            .iter()
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v));
        let from_recent = self
            .recent
            .range((Bound::Included(MetaBytes::new(prefix)), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix));
        merge_sorted(from_sorted, from_recent)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&MetaBytes, &PendingMeta)> {
        self.sorted
            .iter()
            .map(|(k, v)| (k, v))
            .chain(self.recent.iter())
    }

    /// Keeps the entries for which `keep` is true, and gives back the memory of the rest
    /// when that is more than half.
    pub fn retain(&mut self, mut keep: impl FnMut(&MetaBytes, &PendingMeta) -> bool) {
        self.recent.retain(|k, v| keep(k, v));
        self.sorted.retain(|(k, v)| keep(k, v));
        if self.sorted.capacity() > 2 * self.sorted.len() + MIN_RECENT {
            self.sorted.shrink_to_fit();
        }
    }
}

/// Two iterators sorted by key with no key in both, merged in key order.
fn merge_sorted<'a>(
    a: impl Iterator<Item = (&'a MetaBytes, &'a PendingMeta)>,
    b: impl Iterator<Item = (&'a MetaBytes, &'a PendingMeta)>,
) -> impl Iterator<Item = (&'a MetaBytes, &'a PendingMeta)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A change of an earlier sequence never replaces a later one, whether the key is in
    /// the recent map or already merged into the vector.
    #[test]
    fn an_earlier_sequence_does_not_replace_a_later_one() {
        let mut m = PendingMap::default();
        let v = |s: &str| Some(MetaBytes::new(s.as_bytes()));
        m.insert(MetaBytes::new(b"tot/a"), (7, v("seven")));
        m.insert(MetaBytes::new(b"tot/a"), (6, v("six")));
        assert_eq!(m.get(b"tot/a"), Some(&(7, v("seven"))));
        // Enough other keys that `tot/a` moves into the sorted vector.
        for i in 0..=MIN_RECENT {
            m.insert(MetaBytes::from(format!("k/{i:05}").into_bytes()), (1, None));
        }
        assert!(m.position(b"tot/a").is_ok(), "merged");
        m.insert(MetaBytes::new(b"tot/a"), (5, None));
        assert_eq!(m.get(b"tot/a"), Some(&(7, v("seven"))));
        m.insert(MetaBytes::new(b"tot/a"), (8, None));
        assert_eq!(m.get(b"tot/a"), Some(&(8, None)));
    }

    /// Inserts, updates, removals and prefix scans agree with a `BTreeMap` through many
    /// merges.
    #[test]
    fn behaves_like_a_btreemap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut m = PendingMap::default();
        let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let key = |rng: &mut rand::rngs::StdRng| -> Vec<u8> {
            let p: &[u8] = [&b"tot/"[..], b"def/", b"seq/", b"t"][rng.gen_range(0..4)];
            let mut k = p.to_vec();
            k.extend((0..rng.gen_range(0..30)).map(|_| rng.gen_range(b'a'..b'e')));
            k
        };
        for seq in 0..20_000u64 {
            let k = key(&mut rng);
            m.insert(
                MetaBytes::from(k.clone()),
                (seq, Some(MetaBytes::new(b"v"))),
            );
            model.insert(k, seq);
            if seq % 5_000 == 4_999 {
                let before = seq - 2_000;
                m.retain(|_, (s, _)| *s >= before);
                model.retain(|_, s| *s >= before);
            }
            if seq % 997 == 0 {
                for p in [&b"tot/a"[..], b"def/", b"t", b"", b"tot/abc"] {
                    let got: Vec<(Vec<u8>, u64)> =
                        m.scan_prefix(p).map(|(k, v)| (k.to_vec(), v.0)).collect();
                    let want: Vec<(Vec<u8>, u64)> = model
                        .iter()
                        .filter(|(k, _)| k.starts_with(p))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    assert_eq!(got, want, "prefix {p:?} at {seq}");
                }
            }
        }
        assert_eq!(m.len(), model.len());
        for (k, s) in &model {
            assert_eq!(m.get(k).map(|v| v.0), Some(*s));
        }
        assert!(m.get(b"tot/zzz").is_none());
        assert!(m.sorted.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
