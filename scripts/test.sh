#!/usr/bin/env bash
# Installs what Kappie's tests need on a fresh Debian machine, then runs formatting and lint
# checks and every test. The namespace tests need root (CI runs as root); without it they
# say so and skip.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in ip:iproute2 ss:iproute2 nstat:iproute2 curl:curl clang-19:clang-19 nft:nftables prometheus:prometheus openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    echo "missing ${need[*]}: run as root or install them with apt-get" >&2
    exit 1
  fi
fi

echo "== eBPF objects match their C sources" >&2
bash ebpf/build.sh --check
echo "== cargo fmt" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --workspace
