//! See `fuzz/checks/shipper.rs` (`node_parsers`) for what this target checks.
#![no_main]

#[path = "../checks/shipper.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::node_parsers(data));
