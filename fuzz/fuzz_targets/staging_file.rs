//! See `fuzz/checks/storage.rs` (`staging_file`) for what this target checks.
#![no_main]

#[path = "../checks/storage.rs"]
#[allow(dead_code)] // each target uses one of the shared checks
mod checks;

use std::sync::OnceLock;

static TEMPLATE: OnceLock<checks::StagingTemplate> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::staging_file(TEMPLATE.get_or_init(checks::StagingTemplate::build), data)
});
