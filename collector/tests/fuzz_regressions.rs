//! Replays, on stable Rust, the regression inputs and the committed corpus of each fuzz
//! target (see `fuzz/checks/replay.rs`) through the same checks the fuzz targets run
//! (`fuzz/checks/collector.rs`). Fuzzing itself: `scripts/fuzz.sh`.

#[path = "../../fuzz/checks/collector.rs"]
mod checks;

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

use std::path::PathBuf;

fn replay_inputs(target: &str, check: impl Fn(&[u8])) {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    replay::replay(&fuzz_dir, target, check);
}

#[test]
fn remote_write_inputs() {
    replay_inputs("remote_write", checks::remote_write);
}

#[test]
fn promql_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = checks::promql_store(dir.path());
    replay_inputs("promql", |data| checks::promql(&store, data));
}

#[test]
fn grpc_ingest_inputs() {
    replay_inputs("grpc_ingest", checks::grpc_ingest);
}

#[test]
fn remote_read_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = checks::promql_store(dir.path());
    let state = checks::remote_read_state(&store);
    let rt = checks::remote_read_runtime();
    replay_inputs("remote_read", |data| checks::remote_read(&rt, &state, data));
}
