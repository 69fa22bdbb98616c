//! See `fuzz/checks/collector.rs` (`promql`) for what this target checks. Run with
//! `-max_len=4096`: longer queries only test the token limit.
#![no_main]

#[path = "../checks/collector.rs"]
#[allow(dead_code)] // each target uses one of the shared checks
mod checks;

use kappie_storage::Storage;
use std::sync::OnceLock;

/// The store and its directory, kept for the whole run.
static STORE: OnceLock<(tempfile::TempDir, Storage)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, store) = STORE.get_or_init(|| {
        // libfuzzer-sys aborts in its panic hook, before a panic unwinds; the collector
        // catches the parser's panics (`promql::parse`), so let them unwind. A panic that
        // leaves the target still aborts (libfuzzer-sys catches it and aborts).
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
        let dir = tempfile::tempdir().expect("temp dir");
        let store = checks::promql_store(dir.path());
        (dir, store)
    });
    checks::promql(store, data)
});
