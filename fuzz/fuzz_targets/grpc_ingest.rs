//! See `fuzz/checks/collector.rs` (`grpc_ingest`) for what this target checks.
#![no_main]

#[path = "../checks/collector.rs"]
#[allow(dead_code)] // each target uses one of the shared checks
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::grpc_ingest(data));
