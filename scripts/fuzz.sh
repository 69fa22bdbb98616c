#!/usr/bin/env bash
# Fuzzes Kappie's decoders of untrusted bytes with cargo-fuzz (libFuzzer): builds every
# target once, runs each for SECONDS (default 60), prints its executions and coverage,
# and fails if any target crashes, leaks or times out.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: every target)
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# A crash leaves its input in fuzz/artifacts/<target>/: minimize it with
#   cargo +nightly fuzz tmin <target> <input>
# then fix the bug and copy the minimized input to fuzz/regressions/<target>/<bug>, which
# `cargo test` replays on stable (storage/ and collector/ tests/fuzz_regressions.rs).
# New corpus entries land in fuzz/corpus/<target>/; `cargo +nightly fuzz cmin <target>`
# shrinks it before committing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(wal_record wal_segment staging_file window_file chunk_xor remote_write remote_read grpc_ingest promql node_parsers)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 1
fi

# Without a target name this builds every target, once.
cargo +nightly fuzz build

logs=$(mktemp -d)
failed=()
for t in "${targets[@]}"; do
  extra=()
  # Longer queries only exercise the token limit (QueryLimits::max_tokens).
  [ "$t" = promql ] && extra=(-max_len=4096)
  log="$logs/$t.log"
  status=ok
  if ! cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=30 \
      -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    status=FAILED
    failed+=("$t")
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  printf '%-13s %-6s %10s executions in %ss, coverage %s\n' \
    "$t" "$status" "${execs:-?}" "$secs" "${cov:-?}"
  if [ "$status" != ok ]; then
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/    /'
  fi
done
echo "logs: $logs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
