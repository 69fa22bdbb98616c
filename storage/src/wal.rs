//! The write-ahead log: append-only segment files `wal/<first seq, 20 digits>.wal`, one
//! record per commit, fsynced before the commit returns. A record carries everything the
//! commit changes — new series, ingest-state writes and removals, samples — so the sled
//! databases need not be flushed per commit: on open, the records still in the log are
//! applied again (every change in them is idempotent). `Storage::maintain` flushes sled and
//! the blocks and then deletes the segments whose records are all applied and persisted.
//!
//! Frame: `len u32 BE | crc32c(payload) u32 BE | payload`; the payload is the record, its
//! zero bytes suppressed, zstd-compressed (see storage/docs/format.md). Bytes that are no
//! whole frame at the end of the newest segment are a crash during a write (that commit was
//! never acknowledged) and are truncated; such bytes with whole frames after them are
//! damage, skipped and logged.
//!
//! Segments are preallocated: once the current segment is half written, a background thread
//! writes the next segment's file full of zeros and fsyncs it, and frames then overwrite
//! those zeros. Not before half: a log that stays small (a few nodes, or truncated often)
//! never holds a preallocated segment's unused zeros on disk; one that fills segments holds
//! at most a segment's worth of zeros beyond its frames plus the spare
//! (docs/BENCHMARKS.md, footprint with the preallocated log). Writes move to the spare as
//! soon as it is ready, also from a segment begun without one (as after open). An
//! fdatasync after an overwrite of blocks already written needs no journal commit (the
//! file's size and block map do not change): p50 0.10–0.24 ms against 0.17–0.57 ms after an
//! append on this project's test machine (docs/BENCHMARKS.md). Zeros after the last whole
//! frame are therefore the unwritten rest of a segment (a frame is never all zeros, see
//! [`frame_at`]); a segment is cut back to its frames when it is left and at open.

use crate::codec::{put_varint, Reader};
use crate::encoding::zeros;
use crate::{SeriesId, StorageError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One commit.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    /// Series created by this commit: id and encoded labels.
    pub series: Vec<(SeriesId, Vec<u8>)>,
    /// Ingest-state changes: key and new value (`None` removes).
    pub meta: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub samples: Vec<(SeriesId, i64, f64)>,
}

/// First byte of a compressed record payload: `1 | raw length u32 BE | zstd(raw)`. A raw
/// payload starts with its sequence's top byte, which is 0 (sequences stay below 2^56).
/// Written before 2026-12-01; still read.
const ZSTD_RECORD: u8 = 1;
/// First byte of a columnar record payload: `2 | columnar length u32 BE | zstd(columnar)`,
/// see [`Record::encode_columnar`]. Written from 2026-12-01 to 2026-12-02; still read.
const COLUMNAR_RECORD: u8 = 2;
/// First byte of a columnar record payload with its zero bytes suppressed before zstd
/// (written since 2026-12-02): `3 | columnar length u32 BE | zstd(suppressed(columnar))`,
/// see [`crate::encoding::zeros`]. Against tag 2, zstd takes less than half the
/// instructions and the log of the realistic benchmark shape is 10 % smaller.
const SUPPRESSED_RECORD: u8 = 3;
/// zstd level of log records: level 1 compresses a 10,000-sample record in well under a
/// millisecond, small next to the fsync it precedes.
const ZSTD_LEVEL: i32 = 1;
/// Largest raw record a compressed payload may claim (a corrupt length must not make it
/// allocate more).
const MAX_RAW_RECORD: usize = 1 << 30;

/// zstd contexts of earlier records, reused: a context made for each record cost about as
/// much as a tenth of compressing it (allocating and zeroing its tables). It holds at most
/// as many contexts as records were ever compressed at once; the output is the same as a
/// fresh context's.
/// Each with the scratch buffer of its zero-byte suppression.
static COMPRESSORS: std::sync::Mutex<Vec<(zstd::block::Compressor, Vec<u8>)>> =
    std::sync::Mutex::new(Vec::new());

/// zstd of `raw`, or (`suppressed`) of its zero-suppressed form.
fn compress(raw: &[u8], suppressed: bool) -> Vec<u8> {
    let pool = || COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
    let (mut c, mut scratch) = pool().pop().unwrap_or_default();
    let body = if suppressed {
        zeros::suppress(raw, &mut scratch)
    } else {
        raw
    };
    let z = c
        .compress(body, ZSTD_LEVEL)
        .expect("zstd compresses any input");
    pool().push((c, scratch));
    z
}

/// A byte string of a record: owned (a decoded record) or shared with its writer (a
/// commit's label sets and ingest state, written to the log without a copy).
pub(crate) trait RecordBytes {
    fn byte_len(&self) -> usize;
    fn put(&self, out: &mut Vec<u8>);
}

impl RecordBytes for Vec<u8> {
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl RecordBytes for Arc<[u8]> {
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl RecordBytes for crate::MetaBytes {
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn put(&self, out: &mut Vec<u8>) {
        for p in self.parts() {
            out.extend_from_slice(p);
        }
    }
}

/// A record's parts, borrowed: what [`Record`] holds, without owning it.
pub(crate) struct RecordRef<'a, L, K, V> {
    pub seq: u64,
    pub series: &'a [(SeriesId, L)],
    pub meta: &'a [(K, Option<V>)],
    pub samples: &'a [(SeriesId, i64, f64)],
}

impl<L: RecordBytes, K: RecordBytes, V: RecordBytes> RecordRef<'_, L, K, V> {
    /// The payload written to the log: `3 | length | zstd(suppressed(columnar record))`.
    pub fn encode(&self) -> Vec<u8> {
        Record::frame_compressed(SUPPRESSED_RECORD, &self.encode_columnar())
    }

    /// The header shared by both layouts: sequence, new series, ingest-state changes.
    fn encode_header(&self, out: &mut Vec<u8>) {
        let put_bytes = |out: &mut Vec<u8>, b: &dyn RecordBytes| {
            out.extend_from_slice(&(b.byte_len() as u32).to_be_bytes());
            b.put(out);
        };
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&(self.series.len() as u32).to_be_bytes());
        for (id, labels) in self.series {
            out.extend_from_slice(&id.to_be_bytes());
            put_bytes(out, labels);
        }
        out.extend_from_slice(&(self.meta.len() as u32).to_be_bytes());
        for (k, v) in self.meta {
            out.push(v.is_some() as u8);
            put_bytes(out, k);
            if let Some(v) = v {
                put_bytes(out, v);
            }
        }
    }

    /// The header, then the samples as three columns that zstd compresses far better than
    /// interleaved samples (issue 11: the log was most of the fresh footprint). A *run* is
    /// consecutive samples of one series (remote write sends a series' samples together; a
    /// shipper's push sends one sample per series).
    /// - `n u32`, the record's first timestamp (zigzag varint), then ids: zigzag varint of the difference to the previous sample's id;
    /// - timestamps: in a run, zigzag varint of the change of the time step (delta of
    ///   delta; the run's second sample: its delta); at a run's start, of the difference
    ///   to the record's first timestamp;
    /// - values: in a run, the bits XOR the previous value's; at a run's start, the bits;
    ///   stored as 8 byte planes (every value's most significant byte, then every second
    ///   byte, ...), so the bytes that repeat across values lie together.
    fn encode_columnar(&self) -> Vec<u8> {
        let n = self.samples.len();
        let mut out = Vec::with_capacity(64 + n * 12);
        self.encode_header(&mut out);
        out.extend_from_slice(&(n as u32).to_be_bytes());
        let mut prev_id = 0u64;
        for &(id, _, _) in self.samples {
            put_varint(&mut out, id.wrapping_sub(prev_id) as i64);
            prev_id = id;
        }
        let base = self.samples.first().map_or(0, |s| s.1);
        put_varint(&mut out, base);
        let mut words = Vec::with_capacity(n);
        let mut prev: Option<(SeriesId, i64, f64)> = None;
        let mut prev_delta = 0i64;
        for &(id, t, v) in self.samples {
            match prev {
                Some((pid, pt, pv)) if pid == id => {
                    let delta = t.wrapping_sub(pt);
                    put_varint(&mut out, delta.wrapping_sub(prev_delta));
                    prev_delta = delta;
                    words.push(v.to_bits() ^ pv.to_bits());
                }
                _ => {
                    put_varint(&mut out, t.wrapping_sub(base));
                    prev_delta = 0;
                    words.push(v.to_bits());
                }
            }
            prev = Some((id, t, v));
        }
        for byte in 0..8 {
            let shift = 56 - 8 * byte;
            out.extend(words.iter().map(|w| (w >> shift) as u8));
        }
        out
    }
}

impl Record {
    /// The payload written to the log (see [`RecordRef::encode`]).
    pub fn encode(&self) -> Vec<u8> {
        self.parts().encode()
    }

    fn parts(&self) -> RecordRef<'_, Vec<u8>, Vec<u8>, Vec<u8>> {
        RecordRef {
            seq: self.seq,
            series: &self.series,
            meta: &self.meta,
            samples: &self.samples,
        }
    }

    /// `tag | raw length u32 BE | zstd(raw, zero-suppressed for tag 3)`.
    fn frame_compressed(tag: u8, raw: &[u8]) -> Vec<u8> {
        let z = compress(raw, tag == SUPPRESSED_RECORD);
        let mut out = Vec::with_capacity(z.len() + 5);
        out.push(tag);
        out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        out.extend_from_slice(&z);
        out
    }

    /// The layout written from 2026-12-01 to 2026-12-02 (tests write it to prove it is
    /// still read).
    #[cfg(test)]
    fn encode_tag2(&self) -> Vec<u8> {
        Self::frame_compressed(COLUMNAR_RECORD, &self.parts().encode_columnar())
    }

    /// The layout written before 2026-12-01 (tests write it to prove it is still read).
    #[cfg(test)]
    fn encode_raw(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.samples.len() * 14);
        self.parts().encode_header(&mut out);
        for &(id, t, v) in &self.samples {
            crate::codec::put_uvarint(&mut out, id);
            put_varint(&mut out, t);
            out.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Record, StorageError> {
        match b.first() {
            Some(&ZSTD_RECORD) => Self::decode_raw(&Self::decompress(b)?),
            Some(&COLUMNAR_RECORD) => Self::decode_columnar(&Self::decompress(b)?),
            Some(&SUPPRESSED_RECORD) => {
                let (len, zs) = Self::decompress_with(b, zeros::max_suppressed_len)?;
                let raw = zeros::expand(&zs, len).ok_or_else(|| {
                    StorageError::Corrupt("WAL record: zero-byte masks do not match".into())
                })?;
                Self::decode_columnar(&raw)
            }
            _ => Self::decode_raw(b),
        }
    }

    fn decompress(b: &[u8]) -> Result<Vec<u8>, StorageError> {
        Ok(Self::decompress_with(b, |len| len)?.1)
    }

    /// The raw length a compressed payload claims, and its zstd frame decompressed into at
    /// most `capacity(raw length)` bytes.
    fn decompress_with(
        b: &[u8],
        capacity: impl Fn(usize) -> usize,
    ) -> Result<(usize, Vec<u8>), StorageError> {
        let len = b
            .get(1..5)
            .and_then(|l| l.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| StorageError::Corrupt("WAL record is truncated".into()))?
            as usize;
        if len > MAX_RAW_RECORD {
            return Err(StorageError::Corrupt(format!(
                "WAL record claims {len} bytes"
            )));
        }
        let body = zstd::block::decompress(&b[5..], capacity(len))
            .map_err(|e| StorageError::Corrupt(format!("WAL record: zstd: {e}")))?;
        Ok((len, body))
    }

    fn decode_header(r: &mut Reader) -> Result<Record, StorageError> {
        let mut rec = Record {
            seq: r.u64()?,
            ..Record::default()
        };
        for _ in 0..r.u32()? {
            let id = r.u64()?;
            rec.series.push((id, r.bytes()?.to_vec()));
        }
        for _ in 0..r.u32()? {
            let set = r.take(1)?[0] == 1;
            let k = r.bytes()?.to_vec();
            let v = if set { Some(r.bytes()?.to_vec()) } else { None };
            rec.meta.push((k, v));
        }
        Ok(rec)
    }

    fn decode_raw(b: &[u8]) -> Result<Record, StorageError> {
        let mut r = Reader::new(b, "WAL record");
        let mut rec = Self::decode_header(&mut r)?;
        while !r.buf.is_empty() {
            let id = r.uvarint()?;
            let t = r.varint()?;
            let v = f64::from_bits(r.u64()?);
            rec.samples.push((id, t, v));
        }
        Ok(rec)
    }

    fn decode_columnar(b: &[u8]) -> Result<Record, StorageError> {
        let mut r = Reader::new(b, "WAL record");
        let mut rec = Self::decode_header(&mut r)?;
        let n = r.u32()? as usize;
        // Every sample takes at least 10 bytes (id, time, value planes): a corrupt count
        // must not make it allocate more than the record holds.
        if n > r.buf.len() / 10 {
            return Err(StorageError::Corrupt(format!(
                "WAL record claims {n} samples in {} bytes",
                r.buf.len()
            )));
        }
        let mut ids = Vec::with_capacity(n);
        let mut prev_id = 0u64;
        for _ in 0..n {
            prev_id = prev_id.wrapping_add(r.varint()? as u64);
            ids.push(prev_id);
        }
        let base = r.varint()?;
        let mut times: Vec<i64> = Vec::with_capacity(n);
        let mut prev_delta = 0i64;
        for i in 0..n {
            let x = r.varint()?;
            let t = if i > 0 && ids[i - 1] == ids[i] {
                prev_delta = prev_delta.wrapping_add(x);
                times[i - 1].wrapping_add(prev_delta)
            } else {
                prev_delta = 0;
                base.wrapping_add(x)
            };
            times.push(t);
        }
        let planes = r.take(8 * n)?;
        if !r.buf.is_empty() {
            return Err(StorageError::Corrupt(
                "WAL record has bytes after its samples".into(),
            ));
        }
        let mut prev_bits = 0u64;
        for i in 0..n {
            let mut w = 0u64;
            for byte in 0..8 {
                w = (w << 8) | planes[byte * n + i] as u64;
            }
            let bits = if i > 0 && ids[i - 1] == ids[i] {
                w ^ prev_bits
            } else {
                w
            };
            prev_bits = bits;
            rec.samples.push((ids[i], times[i], f64::from_bits(bits)));
        }
        Ok(rec)
    }
}

/// The log's segment files.
pub struct Wal {
    dir: PathBuf,
    /// First sequence of each segment, oldest first; the last one is being written.
    segments: Vec<u64>,
    file: Option<Arc<File>>,
    written: u64,
    /// Length of the current file when it was a preallocated spare (zeros past `written`);
    /// 0 when it was not.
    allocated: u64,
    /// A new segment is started past this size.
    segment_bytes: u64,
    /// The next segment's file, being zero-filled in the background (`None`: segments are
    /// not preallocated).
    spare: Option<Spare>,
    /// Sequence of the newest record written or found (0: none).
    newest: u64,
    /// Why appends are refused until the log is opened again (a failed fsync, or a failed
    /// write that could not be cut back out).
    failed: Option<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Io(path.to_owned(), e)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

impl Wal {
    /// A log not opened yet, which refuses writes: the store's place for its log while
    /// [`Wal::open_each`] replays it.
    pub(crate) fn unopened(dir: &Path) -> Wal {
        Wal {
            dir: dir.to_owned(),
            segments: Vec::new(),
            file: None,
            written: 0,
            allocated: 0,
            segment_bytes: u64::MAX,
            spare: None,
            newest: 0,
            failed: Some("the write-ahead log is not open yet".into()),
        }
    }

    /// Opens the log in `dir` and returns every complete record in it, in order.
    /// `preallocate`: segment files are zero-filled ahead of use (see the module doc).
    #[cfg(test)]
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        preallocate: bool,
    ) -> Result<(Wal, Vec<Record>), StorageError> {
        let mut records = Vec::new();
        let w = Self::open_each(dir, segment_bytes, preallocate, |r| {
            records.push(r);
            Ok(())
        })?;
        Ok((w, records))
    }

    /// Opens the log in `dir`, handing every complete record in it to `each`, in order,
    /// one segment at a time: only one segment's records are decoded at once (a replay of
    /// the whole log's records at once left a collector at 677 MiB once open, against 393
    /// MiB this way, for a log of 3.1 M samples and 520,085 series: docs/BENCHMARKS.md).
    pub fn open_each(
        dir: &Path,
        segment_bytes: u64,
        preallocate: bool,
        mut each: impl FnMut(Record) -> Result<(), StorageError>,
    ) -> Result<Wal, StorageError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // A spare left by an earlier run is not trusted to be whole.
        let spare_path = dir.join(SPARE_NAME);
        match std::fs::remove_file(&spare_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&spare_path)(e));
            }
            _ => {}
        }
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".wal")?
                    .parse()
                    .ok()
            })
            .collect();
        segments.sort_unstable();
        let mut newest = 0;
        for (i, first) in segments.iter().enumerate() {
            let path = segment_path(dir, *first);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io(&path))?;
            let (payloads, pos, damaged) = frames_past_damage(&data);
            for (at, bytes) in damaged {
                // Whole frames follow: not a crash during a write but damage. Only the
                // records in these bytes are lost; the log is kept as it is.
                tracing::error!(segment = %path.display(), at, bytes,
                    "write-ahead log segment is damaged; the records in these bytes are skipped \
                     and their samples are lost unless chunks already hold them");
            }
            for payload in payloads {
                let r = Record::decode(payload)?;
                newest = r.seq;
                each(r)?;
            }
            if data[pos..].iter().all(|&b| b == 0) {
                if pos < data.len() {
                    // The unwritten rest of a preallocated segment.
                    cut_segment(&path, pos as u64)?;
                }
            } else {
                if i + 1 != segments.len() {
                    tracing::error!(segment = %path.display(), at = pos, bytes = data.len() - pos,
                        "write-ahead log segment ends in damaged bytes and newer segments \
                         follow; the records in them are skipped and their samples are lost \
                         unless chunks already hold them");
                    continue;
                }
                tracing::warn!(segment = %path.display(), at = pos, dropped = data.len() - pos,
                    "write-ahead log ends in an incomplete record (a crash during a commit that was never acknowledged); truncating it");
                cut_segment(&path, pos as u64)?;
            }
        }
        Ok(Wal {
            dir: dir.to_owned(),
            segments,
            file: None,
            written: 0,
            allocated: 0,
            segment_bytes,
            spare: preallocate.then(|| Spare::idle(spare_path)),
            newest,
            failed: None,
        })
    }

    /// Cuts the zeros off the end of the segment being left (it was fsynced before; a
    /// crash before this cut reaches the disk leaves zeros that `open` cuts).
    fn leave_segment(&mut self) -> Result<(), StorageError> {
        if let Some(f) = self.file.take() {
            if self.allocated > self.written {
                f.set_len(self.written).map_err(io(&self.dir))?;
            }
        }
        self.allocated = 0;
        Ok(())
    }

    /// Creates segment `first` (durably: the directory is synced) and writes there next:
    /// the spare, when it is ready and `use_spare`, else a new empty file.
    fn start_segment(&mut self, first: u64, use_spare: bool) -> Result<(), StorageError> {
        // Names grow; a name already there is an empty segment's (one named by the next
        // sequence, see `truncate_before`), taken over.
        let reused = self.segments.last() == Some(&first);
        debug_assert!(self.segments.last().is_none_or(|&l| l <= first));
        self.leave_segment()?;
        let path = segment_path(&self.dir, first);
        let spare = match &mut self.spare {
            Some(spare) if use_spare => spare.take(),
            _ => None,
        };
        let spare = spare.and_then(|(spare_path, f, len)| {
            match std::fs::rename(&spare_path, &path) {
                Ok(()) => Some((f, len)),
                Err(e) => {
                    tracing::warn!(from = %spare_path.display(), to = %path.display(), error = %e,
                        "cannot rename the preallocated write-ahead log segment; this segment is written without");
                    None
                }
            }
        });
        let (f, allocated) = match spare {
            Some(spare) => spare,
            None => {
                let f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(io(&path))?;
                (f, 0)
            }
        };
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        // A file taken over is empty, but never write over a frame.
        self.written = if allocated > 0 {
            0
        } else {
            f.metadata().map_err(io(&path))?.len()
        };
        self.allocated = allocated;
        self.file = Some(Arc::new(f));
        if !reused {
            self.segments.push(first);
        }
        Ok(())
    }

    /// Appends a record and fsyncs it.
    pub fn append(&mut self, rec: &Record) -> Result<(), StorageError> {
        self.write_frame(rec.seq, &frame(&rec.encode()))?;
        self.sync()
    }

    /// Writes the frame of record `seq` (see [`frame`]) without fsync: the record is
    /// durable only after a later [`Wal::sync`] or an fsync of [`Wal::sync_handle`]'s file
    /// (group commit: one fsync for every frame written before it).
    pub fn write_frame(&mut self, seq: u64, frame: &[u8]) -> Result<(), StorageError> {
        if let Some(why) = &self.failed {
            return Err(StorageError::Stopped(why.clone()));
        }
        // A segment written without preallocation (the spare was not ready when it
        // started, as at open) is left as soon as the spare is ready; not while it is
        // empty: its name is the next sequence's, which the spare is to take.
        let spare_ready = self.allocated == 0
            && self.written > 0
            && self.spare.as_mut().is_some_and(Spare::ready);
        if self.file.is_none() || self.written >= self.segment_bytes || spare_ready {
            // Frames in the segment being left may not be fsynced yet, and later fsyncs
            // reach only the new one.
            self.sync()?;
            self.start_segment(seq, true)?;
        }
        let f: &File = self.file.as_deref().expect("opened above");
        if let Err(e) = f.write_all_at(frame, self.written) {
            // A frame cut short (a full disk) would end the log at open, and every record
            // after it with it: cut it back out. If even that fails, write no more.
            // (That also ends the preallocation: what follows is appended.)
            match f.set_len(self.written) {
                Ok(()) => self.allocated = 0,
                Err(e2) => {
                    self.failed = Some(format!(
                        "a write-ahead log write failed ({e}) and could not be undone ({e2})"
                    ))
                }
            }
            return Err(io(&self.dir)(e));
        }
        self.written += frame.len() as u64;
        self.newest = seq;
        if self.written >= self.segment_bytes / 2 {
            if let Some(spare) = &mut self.spare {
                spare.refill(self.segment_bytes);
            }
        }
        Ok(())
    }

    /// Fsyncs the frames written so far.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        match self.sync_handle()? {
            Some(f) => f.sync_data().map_err(|e| self.sync_failed(e)),
            None => Ok(()),
        }
    }

    /// The file whose fsync makes every frame written so far durable (`None`: nothing to
    /// sync), for an fsync outside the lock that guards the log; a failed fsync goes to
    /// [`Wal::sync_failed`].
    pub fn sync_handle(&self) -> Result<Option<Arc<File>>, StorageError> {
        match &self.failed {
            Some(why) => Err(StorageError::Stopped(why.clone())),
            None => Ok(self.file.clone()),
        }
    }

    /// Records a failed fsync: the log takes no more writes until it is opened again.
    pub fn sync_failed(&mut self, e: std::io::Error) -> StorageError {
        // After a failed fsync the kernel may have dropped the pages it could not write:
        // nothing since the last good fsync can be trusted to be on disk.
        let why = format!("an fsync of the write-ahead log failed ({e})");
        self.failed = Some(why.clone());
        StorageError::Stopped(why)
    }

    /// Deletes the segments all of whose records have sequences below `keep_from`; returns
    /// how many. When every record is below it, an empty segment named `keep_from` takes
    /// over first (its name keeps the sequence from being handed out again after a
    /// restart), so no record that is no longer needed stays on disk.
    pub fn truncate_before(&mut self, keep_from: u64) -> Result<usize, StorageError> {
        if self.newest < keep_from && self.segments.last().is_some_and(|&l| l < keep_from) {
            // Only for its name: an empty file, so that an idle log takes no space.
            self.start_segment(keep_from, false)?;
        }
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1] <= keep_from {
            let path = segment_path(&self.dir, self.segments[0]);
            std::fs::remove_file(&path).map_err(io(&path))?;
            self.segments.remove(0);
            removed += 1;
        }
        // Start a new segment next time if the current one holds only old records, so it
        // can go at the next truncation.
        if removed == 0 && self.segments.len() == 1 && self.written >= self.segment_bytes / 4 {
            self.leave_segment()?;
        }
        Ok(removed)
    }

    /// Deletes the spare segment (waiting for its preparation to end): a stopped log takes
    /// no more disk than its frames. Writes after this go on without preallocation until
    /// the next segment starts a new spare.
    pub fn remove_spare(&mut self) -> Result<(), StorageError> {
        if let Some(spare) = &mut self.spare {
            spare.collect(true);
            spare.ready = None;
            match std::fs::remove_file(&spare.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&spare.path)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits until the spare segment is ready (or its preparation failed).
    #[cfg(test)]
    fn wait_spare(&mut self) {
        if let Some(s) = &mut self.spare {
            s.collect(true);
        }
    }

    /// The segment being written and the bytes of frames in it (`None`: none is open), for
    /// [`segment_sizes`]: the caller lists the directory after releasing the log's lock.
    pub fn current(&self) -> Option<(u64, u64)> {
        self.file.as_ref()?;
        Some((*self.segments.last()?, self.written))
    }
}

impl Drop for Wal {
    /// Waits for the spare's preparation: a thread of a log dropped must not write into a
    /// spare that the next open of the same directory makes.
    fn drop(&mut self) {
        if let Some(job) = self.spare.as_mut().and_then(|s| s.job.take()) {
            let _ = job.join();
        }
    }
}

/// File name of the spare segment (not `*.wal`: no reader lists it).
const SPARE_NAME: &str = "spare.tmp";

/// The next segment's file, zero-filled and fsynced by a thread of its own.
struct Spare {
    job: Option<std::thread::JoinHandle<std::io::Result<(File, u64)>>>,
    /// The file and its length, once the job is done.
    ready: Option<(File, u64)>,
    path: PathBuf,
}

impl Spare {
    /// No spare yet ([`Self::refill`] starts one).
    fn idle(path: PathBuf) -> Spare {
        Spare {
            job: None,
            ready: None,
            path,
        }
    }

    fn start(&mut self, bytes: u64) {
        let path = self.path.clone();
        let job = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || {
                let r = zero_file(&path, bytes);
                if r.is_err() {
                    // A full disk: give the space back; segments are written unallocated.
                    let _ = std::fs::remove_file(&path);
                }
                r.map(|f| (f, bytes))
            });
        match job {
            Ok(j) => self.job = Some(j),
            Err(e) => tracing::warn!(error = %e,
                "cannot start the thread that preallocates write-ahead log segments; the next segment is written without"),
        }
    }

    /// Takes the job's outcome when it is done (or, with `wait`, waits for it).
    fn collect(&mut self, wait: bool) {
        let Some(job) = self.job.take_if(|j| wait || j.is_finished()) else {
            return;
        };
        match job.join() {
            Ok(Ok(ready)) => self.ready = Some(ready),
            Ok(Err(e)) => tracing::warn!(path = %self.path.display(), error = %e,
                "cannot preallocate a write-ahead log segment (is the disk full?); the next segment is written without, which makes each commit's fsync slower"),
            Err(_) => tracing::warn!(path = %self.path.display(),
                "the thread preallocating a write-ahead log segment panicked; the next segment is written without"),
        }
    }

    /// Whether the spare is ready (never waits).
    fn ready(&mut self) -> bool {
        self.collect(false);
        self.ready.is_some()
    }

    /// The spare's path, file and length, if it is ready (never waits).
    fn take(&mut self) -> Option<(PathBuf, File, u64)> {
        self.collect(false);
        let (f, len) = self.ready.take()?;
        Some((self.path.clone(), f, len))
    }

    /// Prepares the next spare unless one is ready or being prepared.
    fn refill(&mut self, bytes: u64) {
        if self.job.is_none() && self.ready.is_none() {
            self.start(bytes);
        }
    }
}

/// Writes `bytes` zeros to a new file at `path` and fsyncs it (its size too).
fn zero_file(path: &Path, bytes: u64) -> std::io::Result<File> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(f)
}

/// Cuts segment `path` to `len` bytes, durably.
fn cut_segment(path: &Path, len: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The frame of a record payload: `len u32 BE | crc32c(payload) u32 BE | payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The segments in `dir`, oldest first: first sequence and bytes of frames in it (on-disk
/// sizes, except `current` ([`Wal::current`]): its frames without its zeros).
pub fn segment_sizes(
    dir: &Path,
    current: Option<(u64, u64)>,
) -> Result<Vec<(u64, u64)>, StorageError> {
    let mut segs = segments(dir)?;
    if let Some((first, written)) = current {
        if let Some(last) = segs.iter_mut().rfind(|s| s.0 == first) {
            last.1 = last.1.min(written);
        }
    }
    Ok(segs)
}

/// Segment files of the log in `dir`: first sequence and size, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, u64)>, StorageError> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let Some(first) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        // A segment deleted between listing and stat is simply gone.
        if let Ok(m) = e.metadata() {
            out.push((first, m.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The payloads of the complete, intact frames at the start of `data`, and the byte offset
/// where they end (a frame cut short or failing its checksum ends the log).
fn complete_frames(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(payload) = frame_at(data, pos) {
        out.push(payload);
        pos += 8 + payload.len();
    }
    (out, pos)
}

/// The payload of the whole, checksummed frame at `pos`, if there is one. A frame is never
/// empty (every record has a sequence): zeros, as a crash can leave at the end of a file,
/// are not an empty frame with the empty input's checksum 0.
fn frame_at(data: &[u8], pos: usize) -> Option<&[u8]> {
    let head = data.get(pos..pos + 8)?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    let payload = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
    (len > 0 && crc32c::crc32c(payload) == crc).then_some(payload)
}

/// Damaged byte ranges `(start, length)` of a segment.
type Damaged = Vec<(usize, usize)>;

/// Every whole frame of a segment, also those after damaged bytes: the payloads in order,
/// the end of the last whole frame, and the damaged ranges before it.
fn frames_past_damage(data: &[u8]) -> (Vec<&[u8]>, usize, Damaged) {
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    let mut pos = 0;
    let mut end = 0;
    while pos < data.len() {
        if let Some(payload) = frame_at(data, pos) {
            out.push(payload);
            pos += 8 + payload.len();
            end = pos;
            continue;
        }
        match (pos + 1..data.len()).find(|&p| frame_at(data, p).is_some()) {
            Some(next) => {
                damaged.push((pos, next - pos));
                pos = next;
            }
            None => break,
        }
    }
    (out, end, damaged)
}

/// Samples in the complete records of segment `path` with sequences from `from` on.
pub fn count_samples(path: &Path, from: u64) -> Result<u64, StorageError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    let mut n = 0;
    for payload in complete_frames(&data).0 {
        let rec = Record::decode(payload)?;
        if rec.seq >= from {
            n += rec.samples.len() as u64;
        }
    }
    Ok(n)
}

/// Reads the log's records in order from outside the writer (remote write follows the log
/// this way). It never changes the files: a frame cut short at the end of the newest
/// segment is a commit still being written, read again next time.
pub struct Tailer {
    dir: PathBuf,
    /// Records with sequences up to this one have been returned.
    after: u64,
    /// The segment being read and the byte offset of its next frame.
    at: Option<(u64, u64)>,
    /// Records after this sequence may be written but not yet fsynced (a crash can take
    /// them back): not returned yet. `None`: every complete record is returned.
    durable: Option<Arc<AtomicU64>>,
}

impl Tailer {
    /// A tailer returning the records after sequence `after`.
    pub fn new(dir: &Path, after: u64) -> Tailer {
        Tailer {
            dir: dir.to_owned(),
            after,
            at: None,
            durable: None,
        }
    }

    /// Returns only records up to the sequence in `durable` (the writer's fsynced
    /// position), so that nothing a crash can take back is passed on.
    pub fn up_to(mut self, durable: Arc<AtomicU64>) -> Tailer {
        self.durable = Some(durable);
        self
    }

    /// The sequence of the last record returned.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next complete records after the position, reading at most about `max_bytes` of
    /// the log; an empty result means the reader is at the end.
    pub fn next(&mut self, max_bytes: usize) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::new();
        let mut budget = max_bytes;
        loop {
            let segs = segments(&self.dir)?;
            // The segment that holds the record after `after`: the newest starting at or
            // before it, or the oldest left when older ones were deleted.
            let want = self.after.saturating_add(1);
            let Some(idx) = segs
                .iter()
                .rposition(|(first, _)| *first <= want)
                .or(if segs.is_empty() { None } else { Some(0) })
            else {
                return Ok(out);
            };
            let (first, size) = segs[idx];
            let mut pos = match self.at {
                Some((f, p)) if f == first => p,
                _ => 0,
            };
            if pos >= size {
                match segs.get(idx + 1) {
                    // Finished with this segment: on to the next.
                    Some(&(next_first, _)) => {
                        self.at = Some((next_first, 0));
                        self.after = self.after.max(next_first.saturating_sub(1));
                        continue;
                    }
                    None => return Ok(out),
                }
            }
            let path = segment_path(&self.dir, first);
            let f = match File::open(&path) {
                Ok(f) => f,
                // Truncated away meanwhile: list again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.at = None;
                    continue;
                }
                Err(e) => return Err(StorageError::Io(path, e)),
            };
            let mut r = std::io::BufReader::with_capacity(1 << 20, f);
            use std::io::Seek;
            r.seek(std::io::SeekFrom::Start(pos)).map_err(io(&path))?;
            let durable = self
                .durable
                .as_ref()
                .map_or(u64::MAX, |d| d.load(Ordering::SeqCst));
            // Frames up to the size listed; a frame beyond it is read next time.
            let mut zeros = false;
            while pos + 8 <= size && budget > 0 {
                let mut hdr = [0u8; 8];
                if r.read_exact(&mut hdr).is_err() {
                    break;
                }
                let len = u32::from_be_bytes(hdr[..4].try_into().expect("4 bytes")) as u64;
                let crc = u32::from_be_bytes(hdr[4..].try_into().expect("4 bytes"));
                if len == 0 {
                    // A preallocated segment's zeros: no frame here yet.
                    zeros = hdr == [0; 8];
                    break;
                }
                if pos + 8 + len > size {
                    break;
                }
                let mut payload = vec![0u8; len as usize];
                if r.read_exact(&mut payload).is_err() || crc32c::crc32c(&payload) != crc {
                    break;
                }
                let rec = Record::decode(&payload)?;
                if rec.seq > durable {
                    // Written, not yet fsynced: read again next time.
                    self.at = Some((first, pos));
                    return Ok(out);
                }
                pos += 8 + len;
                if rec.seq > self.after {
                    self.after = rec.seq;
                    budget = budget.saturating_sub(8 + len as usize);
                    out.push(rec);
                }
            }
            self.at = Some((first, pos));
            if budget == 0 {
                return Ok(out);
            }
            if pos < size {
                match segs.get(idx + 1) {
                    // The newest segment ends in a commit still being written.
                    None => return Ok(out),
                    // An older segment that cannot be read further (or whose zeros were
                    // not cut yet): go on after it.
                    Some(&(next_first, _)) => {
                        if !zeros {
                            tracing::warn!(segment = %path.display(), at = pos, "write-ahead log segment unreadable past this point; following the next one");
                        }
                        self.at = Some((next_first, 0));
                        self.after = self.after.max(next_first.saturating_sub(1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            series: vec![(seq, b"labels".to_vec())],
            meta: vec![
                (b"k".to_vec(), Some(b"v".to_vec())),
                (b"gone".to_vec(), None),
            ],
            samples: vec![
                (1, -5, f64::NAN),
                (u64::MAX, i64::MIN, 1.5),
                (300, i64::MAX, -0.0),
            ],
        }
    }

    /// Log records are zstd-compressed when that is smaller (issue 11: the log was 16 bytes
    /// a sample); raw payloads (small records, and logs written before) still decode, and
    /// damaged compressed ones are an error, not a panic.
    #[test]
    fn large_records_are_compressed_and_raw_ones_still_read() {
        let big = Record {
            seq: 7,
            series: vec![],
            meta: vec![],
            samples: (0..10_000u64)
                .map(|i| {
                    (
                        i % 500,
                        1_700_000_000_000 + (i / 500) as i64 * 10_000,
                        (i * 37) as f64,
                    )
                })
                .collect(),
        };
        let raw = big.encode_raw();
        let payload = big.encode();
        assert_eq!(payload[0], SUPPRESSED_RECORD);
        assert!(
            payload.len() * 2 < raw.len(),
            "{} vs {}",
            payload.len(),
            raw.len()
        );
        assert_eq!(Record::decode(&payload).unwrap(), big);
        // The layouts written before are still read.
        assert_eq!(Record::decode(&big.encode_tag2()).unwrap(), big);
        assert_eq!(Record::decode(&raw).unwrap(), big);
        let mut v1 = vec![ZSTD_RECORD];
        v1.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        v1.extend_from_slice(&zstd::block::compress(&raw, 1).unwrap());
        assert_eq!(Record::decode(&v1).unwrap(), big);
        let small = rec(3);
        assert_eq!(Record::decode(&small.encode_raw()).unwrap().seq, 3);
        let mut bad = payload.clone();
        bad[40] ^= 0xff;
        let _ = Record::decode(&bad); // an error or a different record, never a panic
        assert!(Record::decode(&payload[..20]).is_err());
        let mut huge = payload;
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Record::decode(&huge).is_err());
    }

    /// The columnar layout gives back every sample exactly: runs of one series (remote
    /// write) and one sample per series (a shipper's push) mixed, ids going down, times
    /// before 1970 and at the ends of i64, every kind of float bits.
    /// A commit's record, written from its shared label sets and ingest state, is the
    /// record an owned copy of them makes (and decodes back to it).
    #[test]
    fn a_record_from_shared_parts_is_the_owned_record() {
        use crate::MetaBytes;
        let set: Arc<[u8]> = Arc::from(&b"__name__\x00a\x00node\x00n1"[..]);
        let series = vec![(7u64, set.clone())];
        let meta = vec![
            (
                MetaBytes::shared(b"tot/", &set),
                Some(MetaBytes::new(&[1, 2, 3])),
            ),
            (MetaBytes::new(b"seq/n1"), None),
        ];
        let samples = vec![(7u64, 1_000i64, 1.5f64), (7, 2_000, 2.5)];
        let shared = RecordRef {
            seq: 9,
            series: &series,
            meta: &meta,
            samples: &samples,
        }
        .encode();
        let owned = Record {
            seq: 9,
            series: vec![(7, set.to_vec())],
            meta: vec![
                ([&b"tot/"[..], &set[..]].concat(), Some(vec![1, 2, 3])),
                (b"seq/n1".to_vec(), None),
            ],
            samples: samples.clone(),
        };
        assert_eq!(shared, owned.encode());
        assert_eq!(Record::decode(&shared).unwrap(), owned);
    }

    #[test]
    fn columnar_records_roundtrip_every_shape_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let specials = [
            f64::NAN,
            crate::STALE_NAN_BITS as f64,
            f64::from_bits(crate::STALE_NAN_BITS),
            -0.0,
            f64::INFINITY,
            f64::MIN_POSITIVE / 3.0,
        ];
        for case in 0..200 {
            let mut samples = Vec::new();
            let n = rng.gen_range(0..300);
            while samples.len() < n {
                let id = rng.gen_range(0..40u64) * if case % 2 == 0 { 1 } else { u64::MAX / 50 };
                let mut t: i64 = match rng.gen_range(0..4) {
                    0 => i64::MIN + rng.gen_range(0..1000),
                    1 => i64::MAX - rng.gen_range(0..1_000_000),
                    2 => -rng.gen_range(0..1_000_000_000_000i64),
                    _ => 1_700_000_000_000 + rng.gen_range(0..10_000_000),
                };
                for _ in 0..rng.gen_range(1..20) {
                    let v = match rng.gen_range(0..4) {
                        0 => specials[rng.gen_range(0..specials.len())],
                        1 => f64::from_bits(rng.gen()),
                        _ => rng.gen_range(0..1_000_000u64) as f64,
                    };
                    samples.push((id, t, v));
                    t = t.wrapping_add(rng.gen_range(-5..20_000));
                }
            }
            let r = Record {
                seq: case,
                series: vec![(3, b"labels".to_vec())],
                meta: vec![(b"k".to_vec(), Some(b"v".to_vec())), (b"x".to_vec(), None)],
                samples,
            };
            let back = Record::decode(&r.encode()).unwrap();
            assert_eq!(back.seq, r.seq);
            assert_eq!(back.series, r.series);
            assert_eq!(back.meta, r.meta);
            let bits = |s: &[(SeriesId, i64, f64)]| {
                s.iter()
                    .map(|&(id, t, v)| (id, t, v.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&back.samples), bits(&r.samples), "case {case}");
        }
    }

    #[test]
    fn records_roundtrip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, recs) = Wal::open(dir.path(), 1 << 20, false).unwrap();
            assert!(recs.is_empty());
            for s in 1..=3 {
                w.append(&rec(s)).unwrap();
            }
        }
        // A torn write: half a frame at the end.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let (_, recs) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(recs.len(), 3);
        let got = &recs[1];
        assert_eq!(
            (got.seq, &got.series, &got.meta),
            (2, &rec(2).series, &rec(2).meta)
        );
        for (a, b) in got.samples.iter().zip(&rec(2).samples) {
            assert_eq!((a.0, a.1, a.2.to_bits()), (b.0, b.1, b.2.to_bits()));
        }
        let (_, again) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(again.len(), 3, "the torn tail was truncated, not re-read");
    }

    /// A log written before zero-byte suppression (tag 2 records, 2026-12-01 to 12-02),
    /// followed by records of today's layout in the same segment, still replays whole.
    #[test]
    fn a_log_of_tag_2_records_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let big = |seq: u64| Record {
            seq,
            series: vec![(seq, b"labels".to_vec())],
            meta: vec![],
            samples: (0..600u64)
                .map(|i| {
                    (
                        i % 100,
                        1_700_000_000_000 + (i / 100) as i64 * 10_000,
                        i as f64,
                    )
                })
                .collect(),
        };
        {
            let (mut w, _) = Wal::open(dir.path(), 1 << 20, false).unwrap();
            for s in 1..=2 {
                w.write_frame(s, &frame(&big(s).encode_tag2())).unwrap();
            }
            w.append(&big(3)).unwrap();
        }
        let (_, recs) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        assert_eq!(recs, (1..=3).map(big).collect::<Vec<_>>());
    }

    /// Damage in the middle of a segment (or of an older one) loses only the records it
    /// hit; a tail of zeros (a crash after the file grew) is a torn tail, not a record.
    #[test]
    fn damage_loses_only_the_records_it_hit_and_zeros_are_no_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path(), 1 << 20, false).unwrap();
            for s in 1..=5 {
                w.append(&rec(s)).unwrap();
            }
        }
        let seg = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&seg).unwrap();
        let (frames, _) = complete_frames(&data);
        // A byte in the third record's payload.
        let third = 8 * 3 + frames[0].len() + frames[1].len() + 20;
        data[third] ^= 0x10;
        data.extend_from_slice(&[0; 64]);
        std::fs::write(&seg, &data).unwrap();
        let (mut w, recs) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
        // The zeros were cut; the damage stays (and is skipped again); appends go on.
        w.append(&rec(6)).unwrap();
        drop(w);
        let (_, recs) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5, 6]);
    }

    #[test]
    fn tailer_follows_segments_waits_at_torn_tail_and_survives_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), 150, false).unwrap();
        let mut t = Tailer::new(dir.path(), 0);
        assert!(t.next(1 << 20).unwrap().is_empty());
        for s in [1, 2, 5, 6, 9, 10, 11] {
            w.append(&rec(s)).unwrap();
        }
        assert!(
            segments(dir.path()).unwrap().len() > 2,
            "small segments roll"
        );
        let seqs = |v: Vec<Record>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        // A small budget returns a few records; the rest follow.
        let first = seqs(t.next(1).unwrap());
        assert_eq!(first, vec![1]);
        assert_eq!(seqs(t.next(1 << 20).unwrap()), vec![2, 5, 6, 9, 10, 11]);
        assert_eq!(t.position(), 11);
        // Half a frame at the end is a commit in progress: not returned, read once whole.
        let last = segments(dir.path()).unwrap().last().unwrap().0;
        let seg = segment_path(dir.path(), last);
        let frame = {
            let p = rec(12).encode();
            let mut f = (p.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&crc32c::crc32c(&p).to_be_bytes());
            f.extend_from_slice(&p);
            f
        };
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame[..10]).unwrap();
        assert!(t.next(1 << 20).unwrap().is_empty());
        f.write_all(&frame[10..]).unwrap();
        drop(f);
        assert_eq!(seqs(t.next(1 << 20).unwrap()), vec![12]);
        // A tailer far behind after truncation starts at the oldest record left.
        drop(w);
        let (mut w, _) = Wal::open(dir.path(), 300, false).unwrap();
        w.append(&rec(13)).unwrap();
        w.truncate_before(11).unwrap();
        let mut behind = Tailer::new(dir.path(), 0);
        let got = seqs(behind.next(1 << 20).unwrap());
        assert!(got[0] > 2 && got.ends_with(&[12, 13]), "{got:?}");
    }

    #[test]
    fn truncating_past_every_record_leaves_one_empty_segment_named_by_the_next_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        for s in 1..=3 {
            w.append(&rec(s)).unwrap();
        }
        let mut t = Tailer::new(dir.path(), 0);
        assert_eq!(t.next(1 << 20).unwrap().len(), 3);
        assert_eq!(w.truncate_before(3).unwrap(), 0, "record 3 is still needed");
        assert_eq!(w.truncate_before(4).unwrap(), 1);
        assert_eq!(segments(dir.path()).unwrap(), vec![(4, 0)]);
        drop(w);
        let (mut w, records) = Wal::open(dir.path(), 1 << 20, false).unwrap();
        assert!(records.is_empty());
        assert!(t.next(1 << 20).unwrap().is_empty());
        w.append(&rec(4)).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        // The empty segment was taken over, not listed twice: truncating before record 4
        // keeps its file.
        assert_eq!(w.truncate_before(4).unwrap(), 0);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        let got: Vec<u64> = t.next(1 << 20).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(got, vec![4]);
    }

    fn seqs(v: &[Record]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    /// A preallocated segment: frames overwrite its zeros, readers stop at the zeros, its
    /// size counts frames only, and after a crash (no cut) open keeps every whole record
    /// and cuts half a frame and the zeros.
    #[test]
    fn a_preallocated_segment_takes_frames_over_its_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 64 << 10;
        let (mut w, _) = Wal::open(dir.path(), bytes, true).unwrap();
        prepare_spare(&mut w);
        let mut t = Tailer::new(dir.path(), 0);
        for s in 1..=3 {
            w.append(&rec(s)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert_eq!(len(&seg), bytes, "the spare became segment 1");
        let framed =
            |to: u64| -> u64 { (1..=to).map(|s| frame(&rec(s).encode()).len() as u64).sum() };
        assert_eq!(
            segment_sizes(dir.path(), w.current()).unwrap(),
            vec![(1, framed(3))]
        );
        assert_eq!(seqs(&t.next(1 << 20).unwrap()), vec![1, 2, 3]);
        assert!(t.next(1 << 20).unwrap().is_empty(), "zeros are no record");
        w.append(&rec(4)).unwrap();
        assert_eq!(seqs(&t.next(1 << 20).unwrap()), vec![4]);
        // The next spare is made beside the log, where no reader lists it.
        prepare_spare(&mut w);
        assert_eq!(len(&dir.path().join(SPARE_NAME)), bytes);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        w.remove_spare().unwrap();
        assert!(!dir.path().join(SPARE_NAME).exists());
        // Half of record 5's frame over the zeros, then a crash.
        let five = frame(&rec(5).encode());
        File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .write_all_at(&five[..five.len() / 2], framed(4))
            .unwrap();
        drop(w);
        let (mut w, recs) = Wal::open(dir.path(), bytes, true).unwrap();
        assert_eq!(seqs(&recs), vec![1, 2, 3, 4]);
        assert_eq!(len(&seg), framed(4), "half a frame and the zeros cut");
        w.append(&rec(5)).unwrap();
        drop(w);
        let (_, recs) = Wal::open(dir.path(), bytes, true).unwrap();
        assert_eq!(seqs(&recs), vec![1, 2, 3, 4, 5]);
    }

    /// Segments that roll over take the spare each time; a segment left behind holds its
    /// frames only, and one whose zeros were not cut (a crash) is read past, not damage.
    #[test]
    fn rolled_preallocated_segments_are_cut_to_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 600;
        let (mut w, _) = Wal::open(dir.path(), bytes, true).unwrap();
        let mut s = 0;
        while segments(dir.path()).unwrap().len() < 4 {
            w.wait_spare();
            s += 1;
            w.append(&rec(s)).unwrap();
        }
        let segs = segments(dir.path()).unwrap();
        for (i, (first, size)) in segs.iter().enumerate() {
            let data = std::fs::read(segment_path(dir.path(), *first)).unwrap();
            let end = complete_frames(&data).1;
            if i + 1 < segs.len() {
                assert_eq!(end as u64, *size, "segment {first} holds its frames only");
            } else {
                assert!(*size >= bytes, "the newest segment is preallocated");
                assert!(data[end..].iter().all(|&b| b == 0));
            }
        }
        let all: Vec<u64> = (1..=s).collect();
        assert_eq!(
            seqs(&Tailer::new(dir.path(), 0).next(1 << 20).unwrap()),
            all
        );
        // An older segment still ending in zeros is followed past them.
        let oldest = segment_path(dir.path(), segs[0].0);
        let mut data = std::fs::read(&oldest).unwrap();
        data.extend_from_slice(&[0; 100]);
        std::fs::write(&oldest, &data).unwrap();
        assert_eq!(
            seqs(&Tailer::new(dir.path(), 0).next(1 << 20).unwrap()),
            all
        );
        drop(w);
        let (_, recs) = Wal::open(dir.path(), bytes, true).unwrap();
        assert_eq!(seqs(&recs), all);
        assert_eq!(
            std::fs::metadata(&oldest).unwrap().len(),
            segs[0].1,
            "open cut the zeros"
        );
    }

    /// Starts the spare's preparation now (the log starts it once the current segment is
    /// half written) and waits for it.
    fn prepare_spare(w: &mut Wal) {
        let bytes = w.segment_bytes;
        w.spare.as_mut().unwrap().refill(bytes);
        w.wait_spare();
    }

    /// No spare is made until the current segment is half written (a small log holds no
    /// zeros); then writes move to it as soon as it is ready.
    #[test]
    fn the_spare_waits_for_a_half_written_segment() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 4096;
        let (mut w, _) = Wal::open(dir.path(), bytes, true).unwrap();
        let spare = dir.path().join(SPARE_NAME);
        let mut s = 0;
        while w.written + (frame(&rec(s + 1).encode()).len() as u64) < bytes / 2 {
            s += 1;
            w.append(&rec(s)).unwrap();
            w.wait_spare();
            assert!(!spare.exists(), "no spare before half the segment");
        }
        assert!(s > 3, "several records before half");
        s += 1;
        w.append(&rec(s)).unwrap();
        w.wait_spare();
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), bytes);
        s += 1;
        w.append(&rec(s)).unwrap();
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1], (s, bytes), "the last record went into the spare");
        assert!(!spare.exists());
    }

    /// A segment begun before the spare was ready (as at open) is left for the spare as
    /// soon as it is ready.
    #[test]
    fn writes_move_to_the_spare_once_it_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 1 << 20;
        let (mut w, _) = Wal::open(dir.path(), bytes, true).unwrap();
        w.append(&rec(1)).unwrap();
        assert_eq!(w.allocated, 0, "no spare was ready");
        prepare_spare(&mut w);
        w.append(&rec(2)).unwrap();
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1], (2, bytes), "record 2 went into the spare");
        assert_eq!(
            seqs(&Tailer::new(dir.path(), 0).next(1 << 20).unwrap()),
            vec![1, 2]
        );
    }

    /// Dropping a log waits for its spare's preparation, so no thread of it writes into
    /// the directory once the next open makes its own spare there.
    #[test]
    fn a_dropped_log_leaves_no_spare_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 8 << 20;
        let (mut w, _) = Wal::open(dir.path(), bytes, true).unwrap();
        w.spare.as_mut().unwrap().refill(bytes);
        drop(w);
        let spare = dir.path().join(SPARE_NAME);
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), bytes);
        let (mut w, _) = Wal::open(dir.path(), bytes, true).unwrap();
        w.append(&rec(1)).unwrap();
        prepare_spare(&mut w);
        w.append(&rec(2)).unwrap();
        assert_eq!(
            seqs(&Tailer::new(dir.path(), 0).next(1 << 20).unwrap()),
            vec![1, 2]
        );
    }
}
