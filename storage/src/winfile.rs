//! One compacted chunk window as an immutable, checksummed file.
//!
//! sled 0.34 stores immutable 16 KiB pages in 1.2–2.8x their size (docs/BENCHMARKS.md), so a
//! window that no longer changes lives in a file of its own, as Prometheus's and
//! VictoriaMetrics's sealed blocks do, and sled keeps only what is mutable. Layout
//! (`storage/docs/format.md`, "Compacted window file"):
//!
//! ```text
//! header 12 B | page 0 | page 1 | ... | timestamp table | directory | footer 52 B
//! ```
//!
//! A page is a [`wincodec::section`] (directory and records) of a run of series, about
//! `page_bytes` long; the window's timestamp table ([`wincodec::Encoder::table`]) is stored
//! once for all pages (measured against a table per page in docs/BENCHMARKS.md). Every byte
//! is covered by a check: the header's magic and version, a CRC32C per page, of the table,
//! of the directory and of the footer.
//!
//! [`open`] validates everything but the pages and keeps the directory and the table in
//! memory; [`WindowFile::read_series`] reads one page with a positional read and checks its
//! CRC. A file is written by [`Writer`] under a temporary name, fsynced, renamed into place
//! and its directory fsynced, so a file with the final name is always complete.

use crate::wincodec::{self, Encoder, SharedColumns, Table, WindowSeries};
use crate::{SeriesId, StorageError};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KPWINDOW";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
const FOOTER_LEN: u64 = 52;
const ENTRY_LEN: u64 = 24;
/// Pages are cut once their records reach this many bytes, unless told otherwise.
pub const DEFAULT_PAGE_BYTES: usize = 16 * 1024;

/// What a written file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSummary {
    pub series: u64,
    pub samples: u64,
    pub pages: u64,
    /// Timestamp columns in the table (shared by more than one series).
    pub shared_columns: u64,
    pub bytes: u64,
}

struct Entry {
    first_id: SeriesId,
    offset: u64,
    len: u32,
    crc: u32,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Io(path.to_path_buf(), e)
}

/// Writes one window's file, streaming: [`Writer::add`] every series in id order (the same
/// series [`SharedColumns::count`] saw), then [`Writer::finish`]. Dropped unfinished, it
/// removes its temporary file.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    base: i64,
    page_bytes: usize,
    enc: Encoder,
    page: Vec<(SeriesId, Vec<u8>)>,
    page_len: usize,
    offset: u64,
    dir: Vec<Entry>,
    last_id: Option<SeriesId>,
    series: u64,
    samples: u64,
}

impl Writer {
    /// Starts `path` (written as `<path>.tmp` until [`Writer::finish`]) for the window that
    /// starts at `base` (ms), with the first pass's timestamp counts.
    pub fn create(
        path: &Path,
        base: i64,
        shared: SharedColumns,
        page_bytes: usize,
    ) -> Result<Self, StorageError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        out.write_all(MAGIC).map_err(io_err(&tmp))?;
        out.write_all(&VERSION.to_be_bytes())
            .map_err(io_err(&tmp))?;
        Ok(Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            base,
            page_bytes: page_bytes.max(1),
            enc: Encoder::new(base, shared),
            page: Vec::new(),
            page_len: 0,
            offset: HEADER_LEN,
            dir: Vec::new(),
            last_id: None,
            series: 0,
            samples: 0,
        })
    }

    fn out(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("present until finish or drop")
    }

    /// Adds the samples of series `id` (in time order).
    ///
    /// Panics if `id` is not greater than the previous one: a bug in the caller.
    pub fn add(&mut self, id: SeriesId, samples: &[(i64, f64)]) -> Result<(), StorageError> {
        assert!(
            self.last_id.is_none_or(|l| id > l),
            "series ids must increase"
        );
        self.last_id = Some(id);
        let rec = self.enc.encode_series(samples);
        self.page_len += rec.len();
        self.page.push((id, rec));
        self.series += 1;
        self.samples += samples.len() as u64;
        if self.page_len >= self.page_bytes {
            self.flush_page()?;
        }
        Ok(())
    }

    fn flush_page(&mut self) -> Result<(), StorageError> {
        let Some(first_id) = self.page.first().map(|p| p.0) else {
            return Ok(());
        };
        let bytes = wincodec::section(&self.page);
        let len = u32::try_from(bytes.len()).map_err(|_| {
            StorageError::Io(
                self.tmp.clone(),
                std::io::Error::other("a page larger than 4 GiB (one series' window?)"),
            )
        })?;
        self.dir.push(Entry {
            first_id,
            offset: self.offset,
            len,
            crc: crc32c::crc32c(&bytes),
        });
        let tmp = self.tmp.clone();
        self.out().write_all(&bytes).map_err(io_err(&tmp))?;
        self.offset += bytes.len() as u64;
        self.page.clear();
        self.page_len = 0;
        Ok(())
    }

    /// Writes the table, directory and footer, fsyncs the file, renames it to its final
    /// name and fsyncs the directory: when this returns, the file is durable and complete.
    pub fn finish(mut self) -> Result<WriteSummary, StorageError> {
        self.flush_page()?;
        let table = self.enc.table();
        let table_offset = self.offset;
        let mut dir = Vec::with_capacity(self.dir.len() * ENTRY_LEN as usize);
        for e in &self.dir {
            dir.extend_from_slice(&e.first_id.to_be_bytes());
            dir.extend_from_slice(&e.offset.to_be_bytes());
            dir.extend_from_slice(&e.len.to_be_bytes());
            dir.extend_from_slice(&e.crc.to_be_bytes());
        }
        let too_big = |what: &str| {
            StorageError::Io(
                self.tmp.clone(),
                std::io::Error::other(format!("{what} does not fit the file format's u32")),
            )
        };
        let table_len = u32::try_from(table.len()).map_err(|_| too_big("the timestamp table"))?;
        let pages = u32::try_from(self.dir.len()).map_err(|_| too_big("the page count"))?;
        let dir_offset = table_offset + table.len() as u64;
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.extend_from_slice(&self.base.to_be_bytes());
        footer.extend_from_slice(&table_offset.to_be_bytes());
        footer.extend_from_slice(&table_len.to_be_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&table).to_be_bytes());
        footer.extend_from_slice(&dir_offset.to_be_bytes());
        footer.extend_from_slice(&pages.to_be_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&dir).to_be_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&footer).to_be_bytes());
        footer.extend_from_slice(MAGIC);
        let tmp = self.tmp.clone();
        let out = self.out.take().expect("present until finish");
        let durable = (|| {
            let mut out = out;
            for part in [&table, &dir, &footer] {
                out.write_all(part).map_err(io_err(&tmp))?;
            }
            let file = out
                .into_inner()
                .map_err(|e| StorageError::Io(tmp.clone(), e.into_error()))?;
            file.sync_all().map_err(io_err(&tmp))
        })();
        if let Err(e) = durable {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        let parent = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))?;
        Ok(WriteSummary {
            series: self.series,
            samples: self.samples,
            pages: self.dir.len() as u64,
            shared_columns: Table::parse(self.base, &table)?.len() as u64,
            bytes: dir_offset + dir.len() as u64 + FOOTER_LEN,
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            // Unfinished: nothing points at the temporary file.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes the window of `series` (sorted by id) to `path`: both passes over a slice.
pub fn write(
    path: &Path,
    base: i64,
    series: &[WindowSeries],
    page_bytes: usize,
) -> Result<WriteSummary, StorageError> {
    let mut shared = SharedColumns::new();
    for (_, s) in series {
        shared.count(s);
    }
    let mut w = Writer::create(path, base, shared, page_bytes)?;
    for (id, s) in series {
        w.add(*id, s)?;
    }
    w.finish()
}

/// An open window file: its directory and timestamp table in memory, pages read on demand.
pub struct WindowFile {
    path: PathBuf,
    file: File,
    base: i64,
    dir: Vec<Entry>,
    table: Vec<u8>,
    /// The table's columns, decoded on the first read of a series.
    columns: std::sync::OnceLock<Vec<Vec<i64>>>,
    /// The pages read last (index, checked bytes), newest first: a query reads series in
    /// label order, which is mostly id order, so neighbours share a page.
    recent: std::sync::Mutex<std::collections::VecDeque<(usize, std::sync::Arc<Vec<u8>>)>>,
}

/// Pages kept per open file (`WindowFile::recent`).
const RECENT_PAGES: usize = 4;

/// The message of a codec error, to be wrapped in one that names the file.
fn detail(e: StorageError) -> String {
    match e {
        StorageError::Corrupt(m) => m,
        e => e.to_string(),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Opens a window file and validates its header, footer, directory and table.
pub fn open(path: &Path) -> Result<WindowFile, StorageError> {
    let bad = |what: &str| {
        StorageError::Corrupt(format!(
            "compacted window file {}: {what}; the file is damaged: restore it from a backup, \
             or delete it to drop this window's compacted samples",
            path.display()
        ))
    };
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(bad(&format!("{len} bytes is too short")));
    }
    let read = |offset: u64, n: u64| -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0; n as usize];
        file.read_exact_at(&mut buf, offset).map_err(io_err(path))?;
        Ok(buf)
    };
    let header = read(0, HEADER_LEN)?;
    if &header[..8] != MAGIC {
        return Err(bad("not a window file (magic)"));
    }
    let version = be_u32(&header[8..]);
    if version != VERSION {
        return Err(bad(&format!(
            "version {version}, this build reads {VERSION}"
        )));
    }
    let f = read(len - FOOTER_LEN, FOOTER_LEN)?;
    if &f[44..] != MAGIC {
        return Err(bad("footer magic missing (truncated?)"));
    }
    if crc32c::crc32c(&f[..40]) != be_u32(&f[40..]) {
        return Err(bad("footer checksum mismatch"));
    }
    let base = be_u64(&f[0..]) as i64;
    let (table_offset, table_len) = (be_u64(&f[8..]), be_u32(&f[16..]) as u64);
    let table_crc = be_u32(&f[20..]);
    let (dir_offset, pages, dir_crc) =
        (be_u64(&f[24..]), be_u32(&f[32..]) as u64, be_u32(&f[36..]));
    if table_offset < HEADER_LEN
        || table_offset.checked_add(table_len) != Some(dir_offset)
        || dir_offset.checked_add(pages * ENTRY_LEN) != Some(len - FOOTER_LEN)
    {
        return Err(bad("footer offsets do not match the file's length"));
    }
    let dir_bytes = read(dir_offset, pages * ENTRY_LEN)?;
    if crc32c::crc32c(&dir_bytes) != dir_crc {
        return Err(bad("directory checksum mismatch"));
    }
    let mut dir = Vec::with_capacity(pages as usize);
    let mut next = HEADER_LEN;
    for e in dir_bytes.chunks_exact(ENTRY_LEN as usize) {
        let entry = Entry {
            first_id: be_u64(e),
            offset: be_u64(&e[8..]),
            len: be_u32(&e[16..]),
            crc: be_u32(&e[20..]),
        };
        if entry.offset != next
            || dir
                .last()
                .is_some_and(|p: &Entry| p.first_id >= entry.first_id)
        {
            return Err(bad("directory entries out of order"));
        }
        next += entry.len as u64;
        dir.push(entry);
    }
    if next != table_offset {
        return Err(bad("pages do not end where the table starts"));
    }
    let table = read(table_offset, table_len)?;
    if crc32c::crc32c(&table) != table_crc {
        return Err(bad("timestamp table checksum mismatch"));
    }
    Table::parse(base, &table).map_err(|e| bad(&detail(e)))?;
    Ok(WindowFile {
        path: path.to_path_buf(),
        file,
        base,
        dir,
        table,
        columns: std::sync::OnceLock::new(),
        recent: Default::default(),
    })
}

impl WindowFile {
    /// Start of the window (ms).
    pub fn base(&self) -> i64 {
        self.base
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pages(&self) -> usize {
        self.dir.len()
    }

    fn bad(&self, what: String) -> StorageError {
        StorageError::Corrupt(format!(
            "compacted window file {}: {what}; the file is damaged: restore it from a backup, \
             or delete it to drop this window's compacted samples",
            self.path.display()
        ))
    }

    /// Page `i`, checked, from the recent pages or read.
    fn cached_page(&self, i: usize) -> Result<std::sync::Arc<Vec<u8>>, StorageError> {
        {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, p)) = recent.iter().find(|(j, _)| *j == i) {
                return Ok(p.clone());
            }
        }
        let p = std::sync::Arc::new(self.page(i)?);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_front((i, p.clone()));
        recent.truncate(RECENT_PAGES);
        Ok(p)
    }

    /// Reads and checks page `i`.
    fn page(&self, i: usize) -> Result<Vec<u8>, StorageError> {
        let e = &self.dir[i];
        let mut buf = vec![0; e.len as usize];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(io_err(&self.path))?;
        if crc32c::crc32c(&buf) != e.crc {
            return Err(self.bad(format!("page {i} checksum mismatch")));
        }
        Ok(buf)
    }

    /// The samples of series `id` in this window (`None` if the file does not hold it),
    /// reading only the page that would hold it.
    pub fn read_series(&self, id: SeriesId) -> Result<Option<Vec<(i64, f64)>>, StorageError> {
        let i = self.dir.partition_point(|e| e.first_id <= id);
        let Some(i) = i.checked_sub(1) else {
            return Ok(None);
        };
        let page = self.cached_page(i)?;
        let wrap = |e: StorageError| self.bad(format!("page {i}: {}", detail(e)));
        let entries = wincodec::parse_section(&page).map_err(wrap)?;
        let Ok(k) = entries.binary_search_by_key(&id, |e| e.0) else {
            return Ok(None);
        };
        let columns = match self.columns.get() {
            Some(c) => c,
            None => {
                let table = Table::parse(self.base, &self.table).map_err(wrap)?;
                let c = table.decode_columns().map_err(wrap)?;
                self.columns.get_or_init(|| c)
            }
        };
        wincodec::decode_record_in(self.base, columns, entries[k].1)
            .map(Some)
            .map_err(wrap)
    }

    /// Every series in the file, in id order.
    pub fn read_all(&self) -> Result<Vec<WindowSeries>, StorageError> {
        let table = Table::parse(self.base, &self.table).map_err(|e| self.bad(detail(e)))?;
        let mut out = Vec::new();
        for i in 0..self.dir.len() {
            let page = self.page(i)?;
            let wrap = |e: StorageError| self.bad(format!("page {i}: {}", detail(e)));
            for (id, rec) in wincodec::parse_section(&page).map_err(wrap)? {
                out.push((id, wincodec::decode_record(&table, rec).map_err(wrap)?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wincodec::testdata::{self, same, same_samples, HOUR};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const BASE: i64 = 472_222 * HOUR;

    fn window(seed: u64) -> Vec<WindowSeries> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = testdata::realistic(&mut rng, BASE, 1_500, 100, 1);
        let mut odd = testdata::adversarial(&mut rng, BASE, 1_500);
        for (i, s) in odd.iter_mut().enumerate() {
            s.0 = 10_000 + i as u64 * 2;
        }
        w.extend(odd);
        w
    }

    #[test]
    fn series_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.kpw");
        let w = window(1);
        let summary = write(&path, BASE, &w, DEFAULT_PAGE_BYTES).unwrap();
        assert_eq!(summary.series, 3_000);
        assert!(summary.pages > 10, "{summary:?}");
        assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
        let f = open(&path).unwrap();
        assert_eq!(f.base(), BASE);
        for (id, s) in &w {
            let got = f.read_series(*id).unwrap().expect("present");
            assert!(same_samples(&got, s), "series {id}");
        }
        assert!(same(&f.read_all().unwrap(), &w));
    }

    #[test]
    fn absent_series_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.kpw");
        let w = window(2);
        write(&path, BASE, &w, 1_024).unwrap();
        let f = open(&path).unwrap();
        for id in [0, 2, 3, 5, 9_999, 10_001, 20_000, u64::MAX] {
            assert_eq!(f.read_series(id).unwrap(), None, "id {id}");
        }
        let empty = dir.path().join("empty.kpw");
        write(&empty, BASE, &[], DEFAULT_PAGE_BYTES).unwrap();
        let f = open(&empty).unwrap();
        assert_eq!((f.pages(), f.read_series(1).unwrap()), (0, None));
    }

    #[test]
    fn a_file_appears_complete_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.kpw");
        let w = window(3);
        let mut shared = SharedColumns::new();
        for (_, s) in &w {
            shared.count(s);
        }
        let mut writer = Writer::create(&path, BASE, shared, 512).unwrap();
        for (id, s) in &w[..100] {
            writer.add(*id, s).unwrap();
        }
        assert!(!path.exists(), "the final name appears only at finish");
        drop(writer);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "an unfinished writer left {left:?}");
        write(&path, BASE, &w, 512).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.kpw")]);
    }

    /// A small file of several pages, its bytes, and its series.
    fn small_file(dir: &Path) -> (PathBuf, Vec<u8>, Vec<WindowSeries>) {
        let mut rng = StdRng::seed_from_u64(4);
        let w = testdata::small(&mut rng, BASE);
        let path = dir.join("small.kpw");
        let s = write(&path, BASE, &w, 200).unwrap();
        assert!(s.pages >= 3 && s.shared_columns >= 1, "{s:?}");
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes, w)
    }

    #[test]
    fn every_truncation_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, _) = small_file(dir.path());
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(open(&path).is_err(), "cut at {cut} of {}", bytes.len());
        }
    }

    #[test]
    fn every_bit_flip_is_an_error_and_never_wrong_data() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, w) = small_file(dir.path());
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 0x80 >> (bit % 8);
            std::fs::write(&path, &b).unwrap();
            let Ok(f) = open(&path) else { continue };
            let mut errors = 0;
            for (id, s) in &w {
                match f.read_series(*id) {
                    Err(_) => errors += 1,
                    Ok(got) => assert!(
                        got.is_some_and(|g| same_samples(&g, s)),
                        "flip of bit {bit} changed series {id} unnoticed"
                    ),
                }
            }
            assert!(errors > 0, "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn errors_name_the_file_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes, w) = small_file(dir.path());
        bytes[HEADER_LEN as usize + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let f = open(&path).unwrap();
        let e = f.read_series(w[0].0).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(
            e.contains("page 0 checksum") && e.contains("delete it"),
            "{e}"
        );
        std::fs::write(&path, b"KPWINDOW\0\0\0\x02").unwrap();
        let e = open(&path).err().unwrap().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("too short"),
            "{e}"
        );
    }
}
