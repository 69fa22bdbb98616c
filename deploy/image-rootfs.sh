#!/usr/bin/env bash
# Lays out the container image's root filesystem in OUT: Kappie's binaries from BIN_DIR in
# /usr/local/bin and the few shared libraries they link (glibc, libgcc_s, libm, the loader),
# copied from this machine, plus /etc/passwd and /etc/group. Nothing is pulled from a
# registry. deploy/build-image.sh turns it into an image; deploy/tests/daemonset_as_manifest.rs
# runs the shipper inside it, under the DaemonSet's user, capabilities and mounts.
#
#   deploy/image-rootfs.sh OUT [BIN_DIR]     (BIN_DIR default: target/release)
set -euo pipefail
out=${1:?usage: image-rootfs.sh OUT [BIN_DIR]}
bin_dir=${2:-target/release}
bins=(kappie-collector kappie-shipper)
[ -x "$bin_dir/kappie" ] && bins+=(kappie)

mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp" "$out/proc" "$out/sys" "$out/dev"
chmod 1777 "$out/tmp"
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "image-rootfs: $bin_dir/$b is missing; build it first (cargo build --release -p kappie-collector -p kappie-node-shipper)" >&2; exit 1; }
  install -m 0755 "$bin_dir/$b" "$out/usr/local/bin/$b"
  # Every library the dynamic loader resolves, at the same path as here.
  ldd "$bin_dir/$b" | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done
done
printf 'root:x:0:0:root:/:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/usr/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
