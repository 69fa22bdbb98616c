#!/usr/bin/env bash
# Installs what Kappie's tests need on a fresh Debian machine, then runs formatting and lint
# checks and every test. Each test that needs root, a kernel feature or a program checks it
# through kappie_testkit::require (testkit/src/need.rs: keep the list below in step with it):
# without it the test says why and skips, and with CI set (.ci/run sets it) it fails.
# Nothing is mounted here: the shipper mounts bpffs (/sys/fs/bpf) and tracefs
# (/sys/kernel/tracing) itself when they are missing, and the tests make their own
# namespaces, so no test depends on what an earlier run left on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in ip:iproute2 ss:iproute2 nstat:iproute2 sysctl:procps mount:mount curl:curl \
  clang-19:clang-19 nft:nftables prometheus:prometheus openssl:openssl buildah:buildah \
  setpriv:util-linux unshare:util-linux tmux:tmux chromium:chromium node:nodejs npm:npm \
  ethtool:ethtool x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64-win32; do
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
echo "== web console assets match their sources" >&2
bash collector/console/build.sh --check
echo "== cargo fmt" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "== the shipper for Windows: cargo clippy --target x86_64-pc-windows-gnu" >&2
# ring's build script compiles C for the target even for a check, hence MinGW's gcc above.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu; then
  if ! rustup target add x86_64-pc-windows-gnu; then
    echo "cannot install the Rust target x86_64-pc-windows-gnu (rustup target add" \
      "x86_64-pc-windows-gnu failed, or there is no rustup); the Windows build check needs it" >&2
    exit 1
  fi
fi
cargo clippy --target x86_64-pc-windows-gnu -p kappie-node-shipper -- -D warnings
echo "== cargo test" >&2
cargo test --workspace
