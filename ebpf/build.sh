#!/usr/bin/env bash
# Compiles ebpf/*.bpf.c into ebpf/*.bpf.o (committed, so that building Kappie needs only the
# Rust toolchain). With --check, compiles into a temporary directory and fails if the result
# differs from the committed objects. Needs clang-19 and libbpf-dev.
set -euo pipefail
cd "$(dirname "$0")"
CLANG=${CLANG:-clang-19}
out=.
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
arch_inc=/usr/include/$(uname -m)-linux-gnu
for src in *.bpf.c; do
  obj="$out/${src%.c}.o"
  "$CLANG" -g -O2 -target bpf -Wall -Werror -I. -I"$arch_inc" \
    -fdebug-prefix-map="$PWD"=. -ffile-prefix-map="$PWD"=. -fno-ident \
    -c "$src" -o "$obj"
  if [ "$out" != . ]; then
    cmp -s "$obj" "${src%.c}.o" || { echo "ebpf/${src%.c}.o is stale: run ebpf/build.sh and commit it" >&2; exit 1; }
  fi
done
[ "$out" = . ] || echo "eBPF objects match their sources" >&2
