//! The checks behind the storage fuzz targets, shared as source (`#[path]`) by the targets
//! in `fuzz/fuzz_targets/` and by the stable regression tests in
//! `storage/tests/fuzz_regressions.rs`, so an input that once crashed a target is replayed
//! through exactly the same code by every `cargo test`.
//!
//! A check panics exactly when the fuzzer should report a crash: the code under test
//! panicked or a property failed. `Err` is always a fine answer to damaged bytes.
//!
//! Most of the on-disk layouts are checksummed, so random bytes rarely get past the
//! checksum. The file checks therefore run each input twice: as it is, and with every
//! checksum it frames recomputed (when that changes anything), which hands the decoders
//! behind the checksums bytes that a damaged disk or a hostile file could still carry.

use kappie_storage::wal::Record;
use kappie_storage::{
    chunkenc, wincodec, winfile, Appender, Labels, MatchOp, Matcher, Querier, Storage,
    StorageConfig,
};
use std::path::{Path, PathBuf};

/// `Record::decode` never panics, and a record it accepts encodes and decodes to itself
/// (values compared by their bits, so NaN payloads count).
pub fn wal_record(data: &[u8]) {
    let Ok(rec) = Record::decode(data) else {
        return;
    };
    let again = Record::decode(&rec.encode()).expect("a re-encoded record decodes");
    assert_eq!(record_bits(&rec), record_bits(&again), "record round trip");
}

type RecordBits<'a> = (
    u64,
    &'a [(u64, Vec<u8>)],
    &'a [(Vec<u8>, Option<Vec<u8>>)],
    Vec<(u64, i64, u64)>,
);

fn record_bits(r: &Record) -> RecordBits<'_> {
    let samples = r.samples.iter().map(|&(id, t, v)| (id, t, v.to_bits()));
    (r.seq, &r.series, &r.meta, samples.collect())
}

/// The bytes as the only log segment of a fresh data directory: `Storage::open` (which
/// replays it) and a select of everything give `Ok` or `Err`, never a panic.
pub fn wal_segment(data: &[u8]) {
    for bytes in with_fixed(data, fix_wal_checksums) {
        let dir = tempfile::tempdir().expect("temp dir");
        write_file(&dir.path().join("wal/00000000000000000001.wal"), &bytes);
        open_and_select(dir.path());
    }
}

/// Recomputes the checksum of every whole frame (`len u32 | crc32c u32 | payload`).
pub fn fix_wal_checksums(data: &mut [u8]) {
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let len = be_u32(&data[pos..]) as usize;
        let Some(end) = (pos + 8).checked_add(len).filter(|&e| e <= data.len()) else {
            return;
        };
        let crc = crc32c::crc32c(&data[pos + 8..end]);
        data[pos + 4..pos + 8].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

/// A data directory with one series whose chunks up to about 3.6 million ms are durable,
/// held in memory, so that a fuzzed staging file of that series is read rather than
/// discarded as "cut after the durable mark".
pub struct StagingTemplate {
    /// Every file of the directory except the staging files: path relative to it, bytes.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// The staging file the store wrote (a seed for the fuzzer).
    pub staged: Vec<u8>,
}

/// Name of the fuzzed staging file (window 0, generation 1), as `staging.rs` names them.
const STAGING_NAME: &str = "staging/00000000000000000000-1.kps";

impl StagingTemplate {
    pub fn build() -> StagingTemplate {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = Storage::open(dir.path(), &fuzz_config()).expect("open");
            let labels = Labels::new([("__name__", "fuzz_m"), ("job", "fuzz")]).expect("labels");
            let mut app = store.appender();
            // 300 samples 15 s apart: two cut chunks in window 0, the rest in the head.
            for i in 0..300i64 {
                let v = if i % 7 == 0 { i as f64 + 0.5 } else { i as f64 };
                app.append(&labels, i * 15_000, v).expect("append");
            }
            app.commit().expect("commit");
            store.flush().expect("flush");
        }
        let mut files = Vec::new();
        let mut staged = Vec::new();
        let mut todo = vec![dir.path().to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).expect("read dir") {
                let path = e.expect("dir entry").path();
                if path.is_dir() {
                    todo.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(dir.path())
                    .expect("under dir")
                    .to_path_buf();
                let bytes = std::fs::read(&path).expect("read");
                if rel.starts_with("staging") {
                    if rel == Path::new(STAGING_NAME) {
                        staged = bytes;
                    }
                } else {
                    files.push((rel, bytes));
                }
            }
        }
        assert!(!staged.is_empty(), "the template store staged no chunk");
        StagingTemplate { files, staged }
    }
}

/// The bytes as the staging file of window 0 in the template's directory: `Storage::open`
/// and a select of everything never panic.
pub fn staging_file(template: &StagingTemplate, data: &[u8]) {
    for bytes in with_fixed(data, fix_staging_checksums) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (rel, b) in &template.files {
            write_file(&dir.path().join(rel), b);
        }
        write_file(&dir.path().join(STAGING_NAME), &bytes);
        open_and_select(dir.path());
    }
}

/// Recomputes the checksum of every record whose length fits (`len u32 | crc32c u32 |
/// body of len bytes`).
pub fn fix_staging_checksums(data: &mut [u8]) {
    let mut pos = 0;
    while pos + 24 <= data.len() {
        let len = be_u32(&data[pos..]) as usize;
        let Some(end) = (pos + 8)
            .checked_add(len)
            .filter(|&e| e <= data.len() && len >= 16)
        else {
            return;
        };
        let crc = crc32c::crc32c(&data[pos + 8..end]);
        data[pos + 4..pos + 8].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

/// The bytes as a compacted window file: `winfile::open`, then every series it lists read
/// whole and one at a time, never panic. The bytes also go to `wincodec::decode_all`, the
/// window codec without the file's checksums.
pub fn window_file(data: &[u8]) {
    let _ = wincodec::decode_all(data);
    for bytes in with_fixed(data, fix_window_checksums) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir
            .path()
            .join("blocks/00000000000000000000/00000000000000000000-1.kpw");
        write_file(&path, &bytes);
        let Ok(w) = winfile::open(&path) else {
            continue;
        };
        let Ok(all) = w.read_all() else {
            continue;
        };
        // Damage that keeps the checksums may list a series that a read by id (which
        // trusts the directory's first ids) misses: an answer, not a crash.
        for (id, _) in &all {
            let _ = w.read_series(*id);
        }
        let _ = w.read_series(u64::MAX);
    }
}

/// Layout (storage/docs/format.md): `header 12 | pages | table | directory of 24-byte
/// entries | footer 52`; footer `base u64 | table offset u64 | table len u32 | table crc
/// u32 | dir offset u64 | pages u32 | dir crc u32 | crc of the 40 bytes before u32 |
/// magic 8`; entry `first id u64 | offset u64 | len u32 | crc u32`.
pub fn fix_window_checksums(data: &mut [u8]) {
    let Some(f) = data.len().checked_sub(52) else {
        return;
    };
    let (table_off, table_len) = (be_u64(&data[f + 8..]), be_u32(&data[f + 16..]) as u64);
    let (dir_off, pages) = (be_u64(&data[f + 24..]), be_u32(&data[f + 32..]) as u64);
    let len = data.len() as u64;
    let in_file = |off: u64, n: u64| off.checked_add(n).is_some_and(|e| e <= len);
    if in_file(dir_off, pages * 24) {
        for p in 0..pages {
            let e = (dir_off + p * 24) as usize;
            let (off, n) = (be_u64(&data[e + 8..]), be_u32(&data[e + 16..]) as u64);
            if in_file(off, n) {
                let crc = crc32c::crc32c(&data[off as usize..(off + n) as usize]);
                data[e + 20..e + 24].copy_from_slice(&crc.to_be_bytes());
            }
        }
        let dir = &data[dir_off as usize..(dir_off + pages * 24) as usize];
        let crc = crc32c::crc32c(dir);
        data[f + 36..f + 40].copy_from_slice(&crc.to_be_bytes());
    }
    if in_file(table_off, table_len) {
        let crc = crc32c::crc32c(&data[table_off as usize..(table_off + table_len) as usize]);
        data[f + 20..f + 24].copy_from_slice(&crc.to_be_bytes());
    }
    let crc = crc32c::crc32c(&data[f..f + 40]);
    data[f + 40..f + 44].copy_from_slice(&crc.to_be_bytes());
}

/// `chunkenc::decode` never panics, and the samples of a chunk it accepts, when their
/// times increase (what the appender is given), encode to a chunk that decodes to them.
pub fn chunk_xor(data: &[u8]) {
    let Ok(samples) = chunkenc::decode(data) else {
        return;
    };
    if samples.windows(2).all(|w| w[0].0 < w[1].0) {
        let again = chunkenc::decode(&chunkenc::encode_all(&samples)).expect("re-encoded");
        assert_eq!(bits(&again), bits(&samples), "chunk round trip");
    }
}

fn bits(s: &[(i64, f64)]) -> Vec<(i64, u64)> {
    s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
}

/// `data` as it is, then with its checksums fixed by `fix` if that changes it.
fn with_fixed(data: &[u8], fix: fn(&mut [u8])) -> Vec<Vec<u8>> {
    let mut fixed = data.to_vec();
    fix(&mut fixed);
    if fixed == data {
        vec![fixed]
    } else {
        vec![data.to_vec(), fixed]
    }
}

fn open_and_select(dir: &Path) {
    let Ok(store) = Storage::open(dir, &fuzz_config()) else {
        return;
    };
    let all = Matcher::new(MatchOp::Regex, "__name__", ".+").expect("matcher");
    let _ = store.select(&[all], i64::MIN, i64::MAX);
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a file in a directory")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The store's defaults without a preallocated log: a zero-filled spare segment per
/// input would take most of the fuzzer's time (the replay of zeros is still fuzzed: they are
/// whatever bytes the input holds).
fn fuzz_config() -> StorageConfig {
    StorageConfig {
        wal_preallocate: false,
        ..StorageConfig::default()
    }
}
