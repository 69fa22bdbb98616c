//! See `fuzz/checks/collector.rs` (`remote_read`) for what this target checks.
#![no_main]

#[path = "../checks/collector.rs"]
#[allow(dead_code)] // each target uses one of the shared checks
mod checks;

use kappie_storage::Storage;
use std::sync::OnceLock;

/// The store, its directory, the API state over it and a runtime, kept for the whole run.
static STATE: OnceLock<(
    tempfile::TempDir,
    Storage,
    kappie_collector::api::ApiState,
    tokio::runtime::Runtime,
)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, _, state, rt) = STATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = checks::promql_store(dir.path());
        let state = checks::remote_read_state(&store);
        let rt = checks::remote_read_runtime();
        (dir, store, state, rt)
    });
    checks::remote_read(rt, state, data)
});
