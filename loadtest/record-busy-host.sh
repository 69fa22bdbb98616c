#!/usr/bin/env bash
# Records what a real node shipper sends from a busy host, for `storage-bench --shape
# recorded`: a collector and a shipper (release builds, 10 s interval, eBPF on the default
# route's interface and on a veth into a namespace of this script's own) run for MINUTES
# while traffic of changing size and kind goes into that namespace (iperf3 TCP and UDP
# at random rates and directions, connections to a port the namespace drops, UDP to a
# dropped port, the collector's own HTTP API queried like a dashboard). Whatever else the
# host does meanwhile (builds, tests) is part of the recording. At the end every series
# the collector holds is saved by remote read to OUT (`record-dump`).
#   usage: sudo bash loadtest/record-busy-host.sh MINUTES OUT
# Needs root (eBPF, netns), iperf3 and nft (apt-get install iperf3 nftables).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: record-busy-host.sh MINUTES OUT}
out=${2:?usage: record-busy-host.sh MINUTES OUT}
for tool in iperf3 nft ip curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install iperf3 nftables iproute2 curl" >&2; exit 1; }
done
cargo build --release --bin kappie-collector --bin kappie-shipper --bin record-dump
work=$(mktemp -d /tmp/kappie-record.XXXXXX)
ns=kappie-rec-$$
http=127.0.0.1:19390
grpc=127.0.0.1:19395
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del kr0 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$ns"
ip link add kr0 type veth peer name kr1
ip link set kr1 netns "$ns"
ip addr add 10.78.0.1/24 dev kr0 && ip link set kr0 up
ip -n "$ns" addr add 10.78.0.2/24 dev kr1 && ip -n "$ns" link set kr1 up && ip -n "$ns" link set lo up
ip netns exec "$ns" nft -f - <<'NFT'
table inet rec {
  chain input { type filter hook input priority 0; tcp dport 7 drop; udp dport 9 drop; }
}
NFT
ip netns exec "$ns" iperf3 -s -D --logfile "$work/iperf3-server.log"

target/release/kappie-collector --data-dir "$work/data" --http-listen "$http" --grpc-listen "$grpc" \
  2>"$work/collector.log" &
pids+=($!)
until curl -sf "http://$http/-/ready" >/dev/null; do sleep 0.2; done
dev=$(ip route show default | awk '{print $5; exit}')
target/release/kappie-shipper --collector "http://$grpc" --state-file "$work/shipper-state.json" \
  --node-name "$(hostname)" --cluster recording --ebpf-interfaces "$dev,kr0" \
  --ebpf-pin-dir "/sys/fs/bpf/kappie-record-$$" 2>"$work/shipper.log" &
pids+=($!)
start=$(($(date +%s) * 1000))
end_at=$(($(date +%s) + minutes * 60))

# iperf3 tests of random length, rate, direction and protocol, with pauses.
( while [ "$(date +%s)" -lt "$end_at" ]; do
    opts=(-c 10.78.0.2 -t $((1 + RANDOM % 20)) -b "$((1 + RANDOM % 800))M")
    [ $((RANDOM % 3)) -eq 0 ] && opts+=(-R)
    [ $((RANDOM % 4)) -eq 0 ] && opts+=(-u -l 1200)
    [ $((RANDOM % 3)) -eq 0 ] && opts+=(-P $((1 + RANDOM % 8)))
    iperf3 "${opts[@]}" >/dev/null 2>&1 || true
    sleep $((RANDOM % 15))
  done ) &
pids+=($!)
# Connections the namespace drops (SYN retransmissions, kfree_skb NETFILTER_DROP) and UDP
# to a dropped port, in bursts.
( while [ "$(date +%s)" -lt "$end_at" ]; do
    for _ in $(seq 1 $((RANDOM % 20))); do
      timeout 0.3 bash -c 'exec 3<>/dev/tcp/10.78.0.2/7' 2>/dev/null || true
      echo x >/dev/udp/10.78.0.2/9 2>/dev/null || true
    done
    sleep $((RANDOM % 10))
  done ) &
pids+=($!)
# Dashboard-like queries of the collector's API every few seconds.
( while [ "$(date +%s)" -lt "$end_at" ]; do
    for q in 'sum by (direction) (rate(kappie_forward_bytes[1m]))' 'topk(5, kappie_drop_count)' \
      'kappie_tcp_state' 'rate(kappie_interface_stats[5m])'; do
      curl -sfG "http://$http/api/v1/query" --data-urlencode "query=$q" >/dev/null || true
    done
    sleep $((RANDOM % 5))
  done ) &
pids+=($!)

while [ "$(date +%s)" -lt "$end_at" ]; do
  echo "recording: $(( (end_at - $(date +%s)) / 60 )) minutes left" >&2
  sleep 60
done
sleep 12 # the last interval's push
target/release/record-dump --url "http://$http/api/v1/read" --start "$start" \
  --end $(($(date +%s) * 1000)) --out "$out"
rm -rf "/sys/fs/bpf/kappie-record-$$" "$work"
