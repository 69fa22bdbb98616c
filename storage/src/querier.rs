//! Reading: series selection through the index, samples from block chunks and the head,
//! raw chunks for remote read, and label names and values.

use crate::chunk::{ChunkSource, StoredChunk};
use crate::db::{read_lock, Storage};
use crate::labels::{Labels, Matcher};
use crate::staging::StagedWindow;
use crate::{index, Querier, Sample, Series, SeriesId, StorageError};
use std::collections::{BTreeSet, HashSet};

/// One compressed chunk (Prometheus XOR encoding) and its time range.
#[derive(Debug, Clone, PartialEq)]
pub struct RawChunk {
    pub mint: i64,
    pub maxt: i64,
    pub bytes: Vec<u8>,
}

/// A series with its chunks overlapping the selected range, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkSeries {
    pub labels: Labels,
    pub chunks: Vec<RawChunk>,
}

impl Storage {
    /// Ids of the series matching `matchers` whose time range overlaps `[mint, maxt]`,
    /// with their label sets, sorted by labels.
    fn matching(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(SeriesId, Labels)>, StorageError> {
        let mut out = self.matching_by_id(matchers, mint, maxt)?;
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// [`Storage::matching`] in id order.
    fn matching_by_id(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(SeriesId, Labels)>, StorageError> {
        // Every commit acknowledged before this read is in it.
        self.inner.pipeline.settle();
        let all = || {
            read_lock(&self.inner.head)
                .series
                .ids()
                .collect::<roaring::RoaringTreemap>()
        };
        let ids = index::resolve(self.postings(), matchers, all)?;
        let head = read_lock(&self.inner.head);
        let mut out = Vec::with_capacity(ids.len() as usize);
        for id in ids {
            let Some(s) = head.series.get(id) else {
                continue;
            };
            let open = s.open();
            if open.maxt < mint || open.mint > maxt {
                continue;
            }
            drop(open);
            out.push((id, Labels::decode(&s.labels)?));
        }
        Ok(out)
    }

    /// Chunks of one series overlapping `[mint, maxt]`, in time order: compacted, staged,
    /// then the head chunk.
    pub(crate) fn chunks_of(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<StoredChunk>, StorageError> {
        let cfg = &self.inner.config;
        // Chunks never cross a window boundary, so none that starts before the window of
        // `mint` can reach into the range.
        let from = mint
            .div_euclid(cfg.chunk_span_ms)
            .saturating_mul(cfg.chunk_span_ms);
        let mut out = Vec::new();
        // Held across staging and the head: chunks move from the head to staging under its
        // write lock, so a chunk is seen in exactly one of them (lock order: head, then
        // windows).
        let head = read_lock(&self.inner.head);
        let (files, staged) = read_lock(&self.inner.windows).snapshot(from, maxt);
        for f in &files {
            f.chunks(id, mint, maxt, &mut out)?;
        }
        for file in &staged {
            StagedWindow(file).chunks(id, mint, maxt, &mut out)?;
        }
        // Generations of a window and its staged chunks follow one another in time.
        out.sort_by_key(|c| c.mint());
        head.chunks(id, mint, maxt, &mut out)?;
        Ok(out)
    }

    /// Raw chunks of every matching series (for remote read's STREAMED_XOR_CHUNKS). Chunks
    /// may hold samples outside `[mint, maxt]`; readers filter.
    pub fn select_chunks(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let mut out = Vec::new();
        for (id, labels) in self.matching(matchers, mint, maxt)? {
            let mut chunks = Vec::new();
            for c in self.chunks_of(id, mint, maxt)? {
                c.into_raw(&mut chunks);
            }
            if !chunks.is_empty() {
                out.push(ChunkSeries { labels, chunks });
            }
        }
        Ok(out)
    }

    /// Label sets of the matching series that have data in `[mint, maxt]` (no samples read).
    pub fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, StorageError> {
        Ok(self
            .matching(matchers, mint, maxt)?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// Sorted label names of the matching (or all) series with data in `[mint, maxt]`.
    pub fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for l in self.series(matchers, mint, maxt)? {
            for x in l.iter() {
                if !names.contains(&x.name) {
                    names.insert(x.name.clone());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Sorted values of label `name` among the matching (or all) series with data in
    /// `[mint, maxt]`.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut values: HashSet<String> = HashSet::new();
        if matchers.is_empty() {
            self.inner.pipeline.settle();
            let head = read_lock(&self.inner.head);
            for p in index::postings_of_name(self.postings(), name) {
                let (value, ids) = p?;
                let live = |id: u64| {
                    head.series
                        .get(id)
                        .map(|s| s.open())
                        .is_some_and(|s| s.maxt >= mint && s.mint <= maxt)
                };
                if ids.iter().any(live) {
                    values.insert(value);
                }
            }
        } else {
            for l in self.series(matchers, mint, maxt)? {
                if let Some(v) = l.get(name) {
                    values.insert(v.to_owned());
                }
            }
        }
        let mut v: Vec<String> = values.into_iter().collect();
        v.sort();
        Ok(v)
    }
}

impl Querier for Storage {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, StorageError> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        // Chunks are read in id order, in which a window file's pages and a staging file's
        // records lie (label order would jump between pages and miss their small cache);
        // the series are sorted by labels after.
        for (id, labels) in self.matching_by_id(matchers, mint, maxt)? {
            buf.clear();
            for c in self.chunks_of(id, mint, maxt)? {
                c.decode_into(&mut buf)
                    .map_err(|e| StorageError::Corrupt(format!("series {id}: {e}")))?;
            }
            let samples: Vec<Sample> = buf
                .iter()
                .filter(|(t, _)| *t >= mint && *t <= maxt)
                .map(|&(t, v)| Sample { t, v })
                .collect();
            if !samples.is_empty() {
                out.push(Series { labels, samples });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }
}
