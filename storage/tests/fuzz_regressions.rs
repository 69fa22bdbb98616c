//! Replays, on stable Rust, the regression inputs and the committed corpus of each fuzz
//! target (see `fuzz/checks/replay.rs`) through the same checks the fuzz targets run
//! (`fuzz/checks/storage.rs`). Fuzzing itself: `scripts/fuzz.sh`.

#[path = "../../fuzz/checks/storage.rs"]
mod checks;

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

use std::path::PathBuf;

fn replay_inputs(target: &str, check: impl Fn(&[u8])) {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    replay::replay(&fuzz_dir, target, check);
}

#[test]
fn wal_record_inputs() {
    replay_inputs("wal_record", checks::wal_record);
}

#[test]
fn wal_segment_inputs() {
    replay_inputs("wal_segment", checks::wal_segment);
}

#[test]
fn staging_file_inputs() {
    let template = checks::StagingTemplate::build();
    // The file the store itself wrote, which every fuzzed one is a mutation of.
    checks::staging_file(&template, &template.staged);
    replay_inputs("staging_file", |data| checks::staging_file(&template, data));
}

#[test]
fn window_file_inputs() {
    replay_inputs("window_file", checks::window_file);
}

#[test]
fn chunk_xor_inputs() {
    replay_inputs("chunk_xor", checks::chunk_xor);
}
