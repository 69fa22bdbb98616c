#!/usr/bin/env bash
# Bundles and minifies the web console (src/) with esbuild into dist/, which is committed and
# embedded in the collector binary, so that building Kappie needs only the Rust toolchain.
# With --check, builds into a temporary directory and fails if the result differs from the
# committed dist/. Needs node and npm; esbuild and uPlot come from the registry at the exact
# versions of package-lock.json (npm ci).
set -euo pipefail
cd "$(dirname "$0")"
out=dist
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
# --ignore-scripts: esbuild's postinstall only verifies its binary, which npm ci installed
# from @esbuild/<platform> already.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
mkdir -p "$out"
rm -f "$out"/console.js "$out"/console.css "$out"/index.html
./node_modules/.bin/esbuild src/main.js --bundle --minify --format=esm --target=es2020 \
  --entry-names=console --outdir="$out" --log-level=warning
cp src/index.html "$out"/index.html
if [ "$out" != dist ]; then
  diff -r "$out" dist >/dev/null || {
    diff -r "$out" dist | head -20 >&2
    echo "collector/console/dist is stale: run collector/console/build.sh and commit it" >&2
    exit 1
  }
  echo "console assets match their sources" >&2
fi
