//! Replays the inputs of a fuzz target through its check on stable Rust: every file under
//! `fuzz/regressions/<target>/` (inputs that once crashed the target, each named after the
//! bug it pins) and the committed minimized corpus `fuzz/corpus/<target>/`. Shared as
//! source (`#[path]`) by `storage/tests/fuzz_regressions.rs` and
//! `collector/tests/fuzz_regressions.rs`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Runs `check` on every input of `target` under `fuzz_dir`; fails naming each input that
/// panicked (all of them, not only the first).
pub fn replay(fuzz_dir: &Path, target: &str, check: impl Fn(&[u8])) {
    let mut failed = Vec::new();
    let mut n = 0;
    for kind in ["regressions", "corpus"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir.join(kind).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("directory entry").path();
            let data = std::fs::read(&path).expect("read input");
            n += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(n > 0, "no inputs for {target} under {}", fuzz_dir.display());
    assert!(failed.is_empty(), "{target} panicked on {failed:#?}");
}
