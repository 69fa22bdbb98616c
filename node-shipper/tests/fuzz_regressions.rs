//! Replays, on stable Rust, the regression inputs and the committed corpus of the
//! `node_parsers` fuzz target (see `fuzz/checks/replay.rs`) through the check the target runs
//! (`fuzz/checks/shipper.rs`). Fuzzing itself: `scripts/fuzz.sh`.

#[path = "../../fuzz/checks/shipper.rs"]
mod checks;

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn node_parser_inputs() {
    let fuzz_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    replay::replay(&fuzz_dir, "node_parsers", checks::node_parsers);
}
