//! [`SeriesTable`]: the head's series, findable by id and by encoded label set, in one
//! table (issue 15, memory per series).
//!
//! The series themselves sit in fixed pages of [`PAGE_SLOTS`] slots, reused through a free
//! list, and two hash tables of 4-byte slot numbers find them: by id, and by label set
//! (hashed and compared through the slot's own labels, so the set is kept once). Two
//! `HashMap`s (`id -> MemSeries`, `labels -> id`) kept a 162-byte bucket per series at a
//! power-of-two capacity, up to 2.3 buckets a series just after they grew (2.02 at 519,040
//! and 1,038,907 series); here a grown table costs at most ~12 bytes a series, and pages
//! grow 256 series at a time.
//!
//! Pages are never freed: slots of removed series (retention) are reused by the next new
//! ones, so the table holds as many slots as the most series the head had at once.

use crate::head::MemSeries;
use crate::SeriesId;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Series slots per page.
pub(crate) const PAGE_SLOTS: usize = 256;

/// The head's series by id and by encoded label set.
#[derive(Default)]
pub(crate) struct SeriesTable {
    pages: Vec<Box<[Option<MemSeries>]>>,
    /// Empty slots below `pages.len() * PAGE_SLOTS`, reused first.
    free: Vec<u32>,
    by_id: HashTable<u32>,
    by_labels: HashTable<u32>,
    /// Seeded per process: label sets come from clients, and the seed keeps them from
    /// choosing collisions.
    hasher: foldhash::fast::RandomState,
}

fn slot_of(pages: &[Box<[Option<MemSeries>]>], slot: u32) -> Option<&MemSeries> {
    let slot = slot as usize;
    pages.get(slot / PAGE_SLOTS)?[slot % PAGE_SLOTS].as_ref()
}

impl SeriesTable {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    fn find_id(&self, id: SeriesId) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.by_id
            .find(hash, |&s| {
                slot_of(&self.pages, s).is_some_and(|m| m.id == id)
            })
            .copied()
    }

    pub fn get(&self, id: SeriesId) -> Option<&MemSeries> {
        slot_of(&self.pages, self.find_id(id)?)
    }

    pub fn get_mut(&mut self, id: SeriesId) -> Option<&mut MemSeries> {
        let slot = self.find_id(id)? as usize;
        self.pages[slot / PAGE_SLOTS][slot % PAGE_SLOTS].as_mut()
    }

    pub fn contains_key(&self, id: SeriesId) -> bool {
        self.find_id(id).is_some()
    }

    /// The series with this encoded label set and its slot, a hint for
    /// [`Self::get_hinted`].
    pub fn find(&self, labels: &[u8]) -> Option<(&MemSeries, u32)> {
        let hash = self.hasher.hash_one(labels);
        let slot = *self.by_labels.find(hash, |&s| {
            slot_of(&self.pages, s).is_some_and(|m| *m.labels == *labels)
        })?;
        Some((slot_of(&self.pages, slot)?, slot))
    }

    /// Series `id`, looked for first in `slot` (from [`Self::find`]; a removal since may
    /// have given the slot to another series, so the id is checked), then by id.
    pub fn get_hinted(&self, id: SeriesId, slot: u32) -> Option<&MemSeries> {
        match slot_of(&self.pages, slot) {
            Some(m) if m.id == id => Some(m),
            _ => self.get(id),
        }
    }

    /// The id of the series with this encoded label set.
    pub fn id_of(&self, labels: &[u8]) -> Option<SeriesId> {
        self.find(labels).map(|(m, _)| m.id)
    }

    /// Adds `s`, replacing the series with its id or its label set, if any.
    pub fn insert(&mut self, s: MemSeries) {
        self.remove(s.id);
        if let Some(other) = self.id_of(&s.labels) {
            self.remove(other);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let base = self.pages.len() * PAGE_SLOTS;
                // Slot numbers are 4 bytes: ~4.3 billion series, far past what fits in
                // memory at ~150 bytes each.
                let top = u32::try_from(base + PAGE_SLOTS - 1)
                    .expect("more than u32::MAX series in the head");
                self.pages
                    .push((0..PAGE_SLOTS).map(|_| None).collect::<Vec<_>>().into());
                self.free.extend((base as u32 + 1..=top).rev());
                base as u32
            }
        };
        let Self {
            pages,
            by_id,
            by_labels,
            hasher,
            ..
        } = self;
        by_id.insert_unique(hasher.hash_one(s.id), slot, |&x| {
            slot_of(pages, x).map_or(0, |m| hasher.hash_one(m.id))
        });
        by_labels.insert_unique(hasher.hash_one(&*s.labels), slot, |&x| {
            slot_of(pages, x).map_or(0, |m| hasher.hash_one(&*m.labels))
        });
        pages[slot as usize / PAGE_SLOTS][slot as usize % PAGE_SLOTS] = Some(s);
    }

    /// Removes series `id` from both indexes and gives it back.
    pub fn remove(&mut self, id: SeriesId) -> Option<MemSeries> {
        let slot = self.find_id(id)?;
        let Self {
            pages,
            by_id,
            by_labels,
            hasher,
            free,
        } = self;
        if let Ok(e) = by_id.find_entry(hasher.hash_one(id), |&x| x == slot) {
            e.remove();
        }
        let s = pages[slot as usize / PAGE_SLOTS][slot as usize % PAGE_SLOTS].take()?;
        if let Ok(e) = by_labels.find_entry(hasher.hash_one(&*s.labels), |&x| x == slot) {
            e.remove();
        }
        free.push(slot);
        Some(s)
    }

    /// Every series, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &MemSeries> {
        self.pages.iter().flat_map(|p| p.iter().flatten())
    }

    /// Every series, in no particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut MemSeries> {
        self.pages.iter_mut().flat_map(|p| p.iter_mut().flatten())
    }

    /// Every series id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = SeriesId> + '_ {
        self.values().map(|s| s.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn series(id: SeriesId, labels: &str) -> MemSeries {
        MemSeries::new(id, Arc::from(labels.as_bytes()), 0, 0)
    }

    /// Ids and label sets find the same series through inserts, replacements, removals and
    /// slot reuse across several pages.
    #[test]
    fn finds_series_by_id_and_labels_through_removals_and_reuse() {
        let mut t = SeriesTable::default();
        let n = 3 * PAGE_SLOTS as u64 + 7;
        for id in 1..=n {
            t.insert(series(id, &format!("s{id}")));
        }
        assert_eq!(t.len(), n as usize);
        for id in (1..=n).filter(|id| id % 3 == 0) {
            assert_eq!(t.remove(id).map(|s| s.id), Some(id));
            assert!(t.remove(id).is_none());
        }
        for id in n + 1..=n + 100 {
            t.insert(series(id, &format!("s{id}")));
        }
        assert_eq!(
            t.pages.len(),
            4,
            "removed slots are reused before a page is added"
        );
        for id in 1..=n + 100 {
            let name = format!("s{id}");
            if id <= n && id % 3 == 0 {
                assert!(t.get(id).is_none());
                assert_eq!(t.id_of(name.as_bytes()), None);
            } else {
                assert_eq!(t.get(id).map(|s| &*s.labels), Some(name.as_bytes()));
                assert_eq!(t.id_of(name.as_bytes()), Some(id));
            }
        }
        assert_eq!(t.values().count(), t.len());
        let mut ids: Vec<_> = t.ids().collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), t.len());
    }

    /// Inserting a series whose id or label set is already there replaces it, as a map
    /// insert did.
    #[test]
    fn insert_replaces_the_same_id_or_labels() {
        let mut t = SeriesTable::default();
        t.insert(series(1, "a"));
        t.insert(series(1, "b"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.id_of(b"a"), None);
        assert_eq!(t.id_of(b"b"), Some(1));
        t.insert(series(2, "b"));
        assert_eq!(t.len(), 1);
        assert!(t.get(1).is_none());
        assert_eq!(t.id_of(b"b"), Some(2));
        t.get_mut(2).expect("present").open_mut().maxt = 9;
        assert_eq!(t.get(2).map(|s| s.open().maxt), Some(9));
        // A slot hint finds the series, a stale one (another series' slot) falls back to
        // the id, and a hint never gives another series.
        let (_, slot) = t.find(b"b").expect("present");
        assert_eq!(t.get_hinted(2, slot).map(|s| s.id), Some(2));
        t.insert(series(3, "c"));
        let (_, other) = t.find(b"c").expect("present");
        assert_eq!(t.get_hinted(2, other).map(|s| s.id), Some(2));
        assert_eq!(t.get_hinted(3, slot).map(|s| s.id), Some(3));
        t.remove(2);
        assert!(t.get_hinted(2, slot).is_none());
        assert!(t.get_hinted(2, u32::MAX).is_none());
    }
}
