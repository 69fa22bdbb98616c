//! Housekeeping: cutting idle head chunks, truncating write-ahead records, and retention by
//! time and size (whole blocks, then the series left without data).

use crate::db::{dir_size, read_lock, write_lock, Storage};
use crate::head::cut_chunk;
use crate::{wal, StorageError};
use std::sync::atomic::Ordering;

/// What one `maintain` call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub idle_chunks_cut: usize,
    pub wal_segments_removed: usize,
    pub blocks_removed: usize,
    /// Chunk windows compacted into their blocks.
    pub windows_compacted: usize,
    pub series_removed: usize,
    /// Samples dropped from lagging log readers' holds (see `wal_hold_max_bytes`).
    pub held_samples_dropped: u64,
}

impl Storage {
    /// Runs housekeeping as of `now_ms`. Call it periodically (the collector does every
    /// minute); it holds the write lock while it runs, except while it writes compacted
    /// pages.
    pub fn maintain(&self, now_ms: i64) -> Result<MaintenanceReport, StorageError> {
        let inner = &self.inner;
        let _m = inner.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = MaintenanceReport::default();
        self.cut_and_truncate(now_ms, false, &mut report)?;
        // 3. Windows that are over into their blocks' pages.
        report.windows_compacted = self.compact_windows(now_ms)?;
        self.retention(now_ms, &mut report)?;
        Ok(report)
    }

    /// A clean stop (the collector calls it last on SIGTERM): every head chunk is cut into
    /// staging, made durable and marked, and the log is truncated past it, but for what log
    /// readers (remote write destinations) still hold and the records that carry pending
    /// ingest state, so that a stopped store keeps each sample once, in its chunk. The
    /// store stays usable; the next samples start new chunks.
    ///
    /// Pending ingest state is written to sled only as far as maintenance would (what
    /// records before the oldest head chunk carry); the rest stays in the log and the next
    /// open takes it back from there, as after a crash. Writing all of it (one sled key per
    /// counter total) took more than 60 s at 519k series (2026-12-02), longer than the
    /// 30 s a pod gets to stop.
    pub fn close(&self) -> Result<(), StorageError> {
        let _m = self
            .inner
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut report = MaintenanceReport::default();
        self.cut_and_truncate(i64::MAX, true, &mut report)?;
        // The next open makes its own spare (one left by a crash is not trusted).
        self.inner
            .wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove_spare()?;
        tracing::info!(
            chunks_cut = report.idle_chunks_cut,
            wal_segments_removed = report.wal_segments_removed,
            "store closed"
        );
        Ok(())
    }

    /// Steps 1 and 2 of maintenance, under the write lock. `closing`: pending ingest state
    /// is written only as far as before the cut (see [`Storage::close`]).
    fn cut_and_truncate(
        &self,
        now_ms: i64,
        closing: bool,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let _w = self.lock_write();
        // The first record an open head chunk (or an unstaged chunk) still needs.
        let head_keep = || {
            let head = read_lock(&inner.head);
            let open_first = head
                .series
                .values()
                .filter_map(|s| s.open().head.as_ref().map(|h| h.first_wal))
                .min();
            let unstaged_first = head.unstaged().values().map(|u| u.chunk.first_wal).min();
            open_first
                .into_iter()
                .chain(unstaged_first)
                .min()
                .unwrap_or_else(|| inner.next_wal.load(Ordering::SeqCst))
        };
        let meta_before_close = closing.then(head_keep);

        // 1. Idle head chunks into their blocks, so their records can go. Staged before
        //    the head lock is released: a reader never sees a chunk in neither place.
        let mut cut = Vec::new();
        {
            let mut head = write_lock(&inner.head);
            for s in head.series.values_mut() {
                let id = s.id;
                let s = s.open_mut();
                if s.head.is_some() && s.maxt < now_ms.saturating_sub(cfg.head_idle_ms) {
                    if let Some(h) = s.head.take() {
                        cut.push(cut_chunk(id, h));
                    }
                }
            }
            report.idle_chunks_cut = cut.len();
            self.write_chunks(&mut head, cut);
        }

        // 2. Staged chunks and sled durable (and marked so), then the log segments whose
        //    records are all in chunks.
        let keep_from = head_keep();
        // Ingest state from records before `meta_before` goes to sled; the log keeps the
        // records of what stays pending. Holds only keep more of the log, never less.
        let meta_before = meta_before_close.unwrap_or(keep_from);
        // Pending index entries all go (at most the new series since the last mark, one
        // write per touched label pair), so a stopped store's log is empty.
        self.mark_durable(&_w, meta_before)?;
        let keep_from = keep_from.min(self.oldest_pending_seq());
        let keep_from = self.apply_holds(keep_from, report)?;
        report.wal_segments_removed = inner
            .wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .truncate_before(keep_from)?;
        Ok(())
    }

    /// Steps 4 and 5 of maintenance, under the write lock.
    fn retention(&self, now_ms: i64, report: &mut MaintenanceReport) -> Result<(), StorageError> {
        let inner = &self.inner;
        let cfg = &inner.config;
        let _w = self.lock_write();
        let mut batch = crate::db::Writes::default();

        // 4. Retention by time, then by size (never the newest block).
        let cutoff = now_ms.saturating_sub(cfg.retention_ms);
        let bd = cfg.block_duration_ms;
        let days = self.days();
        let sizes = match cfg.retention_bytes {
            Some(_) => Some((
                dir_size(&inner.dir)?,
                days.iter()
                    .map(|d| self.day_size(*d))
                    .collect::<Result<Vec<u64>, _>>()?,
            )),
            None => None,
        };
        let doomed = plan(&days, bd, cutoff, cfg.retention_bytes, sizes);
        let mut min_valid = inner.min_valid_t.load(Ordering::SeqCst) as i64;
        for start in doomed {
            let end = start.saturating_add(bd);
            let staged: Vec<((i64, u32), crate::staging::Staging)> = {
                let mut w = write_lock(&inner.windows);
                w.files.retain(|(win, _), _| *win < start || *win >= end);
                let keys: Vec<(i64, u32)> = w
                    .staging
                    .range((start, 0)..(end, 0))
                    .map(|(k, _)| *k)
                    .collect();
                keys.into_iter()
                    .filter_map(|k| w.staging.remove(&k).map(|s| (k, s)))
                    .collect()
            };
            // Readers holding one of its files keep reading the unlinked file.
            let dir = block_dir(self, start);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StorageError::Io(dir.clone(), e))
                }
                _ => {}
            }
            for (_, s) in staged {
                crate::staging::remove_staged(s.file.path())?;
            }
            report.blocks_removed += 1;
            min_valid = min_valid.max(end);
            tracing::info!(block_start_ms = start, "retention removed block");
        }
        inner.min_valid_t.store(min_valid as u64, Ordering::SeqCst);

        // 5. Series with nothing left.
        {
            let mut head = write_lock(&inner.head);
            let gone: Vec<u64> = head
                .series
                .values()
                .filter(|s| {
                    let s = s.open();
                    s.head.is_none() && s.maxt < min_valid
                })
                .map(|s| s.id)
                .collect();
            for id in gone {
                if let Some(s) = head.series.remove(id) {
                    inner.series_removed.fetch_add(1, Ordering::SeqCst);
                    batch.series.push(id, crate::index::SeriesOp::Remove);
                    for l in crate::Labels::decode(&s.labels)?.iter() {
                        batch.postings.remove(&l.name, &l.value, id);
                    }
                    report.series_removed += 1;
                }
            }
        }
        // The series removed may have pending index entries (retention can follow a
        // commit that added them); they go to sled first, so what is removed stays removed.
        if !batch.series.is_empty() {
            self.write_index_pending(&_w)?;
        }
        // Series entries before postings: if the process stops in between, the postings
        // left over name no series and are cleaned at open; the other order could leave
        // a series with part of its labels.
        std::mem::take(&mut batch.series).apply(&inner.main)?;
        batch.apply(&inner.main)?;
        inner.main.flush()?;
        Ok(())
    }
}

/// Which days (block starts, oldest first in `days`) retention removes: those that end at or
/// before `cutoff`, then, while the data directory (`sizes`: its total and each day's size)
/// is over `max_bytes`, the oldest ones, never the newest.
pub(crate) fn plan(
    days: &[i64],
    block_ms: i64,
    cutoff: i64,
    max_bytes: Option<u64>,
    sizes: Option<(u64, Vec<u64>)>,
) -> Vec<i64> {
    let mut doomed: Vec<i64> = days
        .iter()
        .copied()
        .filter(|s| s.saturating_add(block_ms) <= cutoff)
        .collect();
    if let (Some(max), Some((mut size, day_sizes))) = (max_bytes, sizes) {
        for (start, day) in days[..days.len().saturating_sub(1)].iter().zip(day_sizes) {
            if size <= max {
                break;
            }
            if !doomed.contains(start) {
                doomed.push(*start);
            }
            size = size.saturating_sub(day);
        }
    }
    doomed
}

impl Storage {
    /// Lowers `keep_from` to what log readers still need, as far as `wal_hold_max_bytes`
    /// allows; samples in segments that go although a reader needs them are counted as
    /// dropped for that reader.
    fn apply_holds(
        &self,
        keep_from: u64,
        report: &mut MaintenanceReport,
    ) -> Result<u64, StorageError> {
        let mut holds = self.inner.holds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(min_hold) = holds.values().map(|h| h.0).min() else {
            return Ok(keep_from);
        };
        if min_hold >= keep_from {
            return Ok(keep_from);
        }
        let dir = self.inner.dir.join("wal");
        let segs = self.wal_segment_sizes()?;
        // Segments that would be kept for the holds (those not wholly before `min_hold`).
        let held: Vec<(u64, u64)> = segs
            .iter()
            .enumerate()
            .filter(|(i, _)| segs.get(i + 1).is_none_or(|n| n.0 > min_hold))
            .map(|(_, s)| *s)
            .collect();
        let mut total: u64 = held.iter().map(|s| s.1).sum();
        let mut keep = min_hold;
        for (i, (first, size)) in held.iter().enumerate() {
            if total <= self.inner.config.wal_hold_max_bytes {
                break;
            }
            let Some(next) = held.get(i + 1) else { break };
            if next.0 > keep_from {
                break;
            }
            // This segment goes: count what each reader that needed it loses.
            let path = dir.join(format!("{first:020}.wal"));
            for (name, (need, dropped)) in holds.iter_mut() {
                if *need < next.0 {
                    let n = wal::count_samples(&path, *need)?;
                    *dropped += n;
                    report.held_samples_dropped += n;
                    tracing::warn!(reader = %name, samples = n, max_bytes = self.inner.config.wal_hold_max_bytes,
                        "write-ahead log held for a lagging reader is over its limit; dropping its oldest segment");
                    *need = next.0;
                }
            }
            total -= size;
            keep = next.0;
        }
        Ok(keep.min(keep_from))
    }
}

impl Storage {
    /// Bytes of one day on disk: its block and its staged windows.
    fn day_size(&self, start: i64) -> Result<u64, StorageError> {
        let end = start.saturating_add(self.inner.config.block_duration_ms);
        let mut size = dir_size(&block_dir(self, start))?;
        for s in read_lock(&self.inner.windows)
            .staging
            .range((start, 0)..(end, 0))
            .map(|(_, s)| s)
        {
            size += s.file.len();
        }
        Ok(size)
    }
}

fn block_dir(s: &Storage, start: i64) -> std::path::PathBuf {
    s.inner.dir.join("blocks").join(format!("{start:020}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn retention_plan_by_time_then_by_size_never_the_newest_day() {
        let days = [0, 100, 200, 300];
        assert_eq!(super::plan(&days, 100, 150, None, None), vec![0]);
        assert_eq!(super::plan(&days, 100, 0, None, None), Vec::<i64>::new());
        let sizes = || Some((100, vec![10, 20, 30, 40]));
        // 100 bytes, at most 65: days 0 and 100 go (100 -> 90 -> 70 -> 40 ...).
        assert_eq!(
            super::plan(&days, 100, 0, Some(65), sizes()),
            vec![0, 100, 200]
        );
        assert_eq!(super::plan(&days, 100, 0, Some(75), sizes()), vec![0, 100]);
        assert_eq!(
            super::plan(&days, 100, 150, Some(1), sizes()),
            vec![0, 100, 200]
        );
        assert_eq!(
            super::plan(&days, 100, 0, Some(1_000), sizes()),
            Vec::<i64>::new()
        );
    }
}
