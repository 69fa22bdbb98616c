#!/usr/bin/env bash
# Runs Kappie on this host: a collector with its embedded store and a node shipper that
# reads this machine's kernel counters and pushes them to it. Ctrl-C stops both.
#   KAPPIE_HTTP_LISTEN (default 127.0.0.1:9090)  KAPPIE_GRPC_LISTEN (default 127.0.0.1:9095)
#   KAPPIE_HOME (default ./kappie-data)          KAPPIE_INTERVAL (default 10s)
set -euo pipefail
cd "$(dirname "$0")/.."
export KAPPIE_HTTP_LISTEN=${KAPPIE_HTTP_LISTEN:-127.0.0.1:9090}
export KAPPIE_GRPC_LISTEN=${KAPPIE_GRPC_LISTEN:-127.0.0.1:9095}
home=${KAPPIE_HOME:-$PWD/kappie-data}
mkdir -p "$home"

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) and run this again" >&2
  exit 1
fi
echo "building (release)..." >&2
cargo build --release --bin kappie-collector --bin kappie-shipper --bin kappie

pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/release/kappie-collector --data-dir "$home/data" 2>"$home/collector.log" &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/${KAPPIE_HTTP_LISTEN%:*}/${KAPPIE_HTTP_LISTEN##*:}") 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "collector exited; see $home/collector.log" >&2; tail -5 "$home/collector.log" >&2; exit 1; }
  sleep 0.1
done
target/release/kappie-shipper --collector "http://$KAPPIE_GRPC_LISTEN" \
  --http-listen "${KAPPIE_SHIPPER_HTTP_LISTEN:-127.0.0.1:9965}" \
  --state-file "$home/shipper-state.json" 2>"$home/shipper.log" &
pids+=($!)

cat <<MSG
Kappie is running on this host.
  Prometheus API (Grafana datasource URL): http://$KAPPIE_HTTP_LISTEN
  web console:                             http://$KAPPIE_HTTP_LISTEN/
  shipper's own metrics:                   http://${KAPPIE_SHIPPER_HTTP_LISTEN:-127.0.0.1:9965}/metrics
  gRPC ingest:                             $KAPPIE_GRPC_LISTEN
  data and logs:                           $home
Try (the first batch arrives within one interval, ${KAPPIE_INTERVAL:-10s}):
  curl -sG http://$KAPPIE_HTTP_LISTEN/api/v1/query --data-urlencode 'query=kappie_tcp_state'
  target/release/kappie --server http://$KAPPIE_HTTP_LISTEN shippers
  target/release/kappie --server http://$KAPPIE_HTTP_LISTEN top interfaces
Ctrl-C stops both.
MSG
wait -n "${pids[@]}"
echo "a Kappie process exited; see $home/*.log" >&2
exit 1
