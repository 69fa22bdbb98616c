//! See `fuzz/checks/storage.rs` (`wal_segment`) for what this target checks.
#![no_main]

#[path = "../checks/storage.rs"]
#[allow(dead_code)] // each target uses one of the shared checks
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::wal_segment(data));
