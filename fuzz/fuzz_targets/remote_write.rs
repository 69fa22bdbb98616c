//! See `fuzz/checks/collector.rs` (`remote_write`) for what this target checks.
#![no_main]

#[path = "../checks/collector.rs"]
#[allow(dead_code)] // each target uses one of the shared checks
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::remote_write(data));
