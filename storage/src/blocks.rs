//! Compacted windows: one immutable file per chunk window and generation,
//! `blocks/<day start>/<window start>-<gen>.kpw` (layout: `winfile` and `wincodec`, and
//! storage/docs/format.md), so that retention removes a day by removing its directory.
//!
//! A file is written as `<name>.pending` (through `<name>.pending.tmp`, fsynced, renamed,
//! directory fsynced) and renamed to its final name only after the durability order allows
//! the generation to count as compacted (`Storage::mark_durable`): a `.kpw` file is always
//! complete and its samples are always covered by their series' durable marks. At open,
//! `.pending` and `.tmp` files (an interrupted compaction; its staging file is still
//! there) are deleted.

use crate::chunk::{ChunkSource, StoredChunk};
use crate::winfile::{self, WindowFile};
use crate::{SeriesId, StorageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compacted window files by (window start, generation).
pub(crate) type Files = BTreeMap<(i64, u32), Arc<WindowFile>>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Io(path.to_owned(), e)
}

/// `blocks/<day start>/`.
pub(crate) fn day_dir(root: &Path, day: i64) -> PathBuf {
    root.join("blocks").join(format!("{day:020}"))
}

/// The final path of a window's file of generation `gen`.
pub(crate) fn window_path(root: &Path, block_ms: i64, window: i64, gen: u32) -> PathBuf {
    day_dir(root, window.div_euclid(block_ms) * block_ms).join(format!("{window:020}-{gen}.kpw"))
}

/// Where compaction writes a window's file before it counts as compacted.
pub(crate) fn pending_path(root: &Path, block_ms: i64, window: i64, gen: u32) -> PathBuf {
    window_path(root, block_ms, window, gen).with_extension("pending")
}

/// `(window, gen)` of a `<window>-<gen>.kpw` file name.
fn parse_name(name: &str) -> Option<(i64, u32)> {
    let (w, g) = name.strip_suffix(".kpw")?.rsplit_once('-')?;
    Some((w.parse().ok()?, g.parse().ok()?))
}

/// Renames a pending file to its final name and fsyncs the directory: from then on the
/// generation counts as compacted.
pub(crate) fn commit_pending(pending: &Path, path: &Path) -> Result<(), StorageError> {
    std::fs::rename(pending, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Opens every compacted window file under `blocks/`, deleting what an interrupted
/// compaction left. A day directory of the earlier layout (a sled database of pages) is
/// refused with what to do.
pub(crate) fn load(root: &Path) -> Result<Files, StorageError> {
    let blocks = root.join("blocks");
    std::fs::create_dir_all(&blocks).map_err(io(&blocks))?;
    let mut files = Files::new();
    for day in std::fs::read_dir(&blocks).map_err(io(&blocks))? {
        let day = day.map_err(io(&blocks))?.path();
        if !day.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&day).map_err(io(&day))? {
            let path = entry.map_err(io(&day))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(key) = parse_name(&name) {
                files.insert(key, Arc::new(winfile::open(&path)?));
            } else if name.ends_with(".pending") || name.ends_with(".tmp") {
                tracing::info!(file = %path.display(), "removing a window file an interrupted compaction left");
                std::fs::remove_file(&path).map_err(io(&path))?;
            } else if name == "conf" || name == "db" {
                return Err(StorageError::Config(format!(
                    "{} holds compacted windows in the earlier layout (sled pages), which this \
                     version does not read; move the data directory away and start with an \
                     empty one",
                    day.display()
                )));
            } else {
                tracing::warn!(file = %path.display(), "ignoring unknown file in blocks/");
            }
        }
    }
    Ok(files)
}

/// One compacted window generation as a chunk source: each series' samples of the window
/// as one chunk.
impl ChunkSource for WindowFile {
    fn chunks(
        &self,
        id: SeriesId,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        if let Some(s) = self.read_series(id)? {
            let overlaps =
                s.first().is_some_and(|f| f.0 <= maxt) && s.last().is_some_and(|l| l.0 >= mint);
            if overlaps {
                out.push(StoredChunk::Samples(s));
            }
        }
        Ok(())
    }

    fn for_each_series(
        &self,
        f: &mut dyn FnMut(SeriesId, Vec<StoredChunk>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        for (id, s) in self.read_all()? {
            f(id, vec![StoredChunk::Samples(s)])?;
        }
        Ok(())
    }
}
