#!/usr/bin/env bash
# Builds the container image kappie:<version> without pulling anything: release binaries,
# their root filesystem (deploy/image-rootfs.sh), then `FROM scratch` (deploy/Dockerfile) with
# the first builder found: buildah (Debian package `buildah`), podman or docker.
#   deploy/build-image.sh [TAG]        then e.g. buildah push kappie:0.1.0 docker://REGISTRY/kappie:0.1.0
#   KAPPIE_IMAGE_ARCHIVE=kappie.tar deploy/build-image.sh    also writes an OCI archive
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-kappie:$version}
echo "==> cargo build --release (collector, shipper, CLI)" >&2
cargo build --release -p kappie-collector -p kappie-node-shipper -p kappie-cli
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
deploy/image-rootfs.sh "$ctx/rootfs" target/release
cp deploy/Dockerfile "$ctx/Dockerfile"
if command -v buildah >/dev/null; then
  buildah bud --quiet -t "$tag" "$ctx"
  [ -n "${KAPPIE_IMAGE_ARCHIVE:-}" ] && buildah push "$tag" "oci-archive:$KAPPIE_IMAGE_ARCHIVE:$tag"
elif command -v podman >/dev/null; then
  podman build -t "$tag" "$ctx"
  [ -n "${KAPPIE_IMAGE_ARCHIVE:-}" ] && podman save --format oci-archive -o "$KAPPIE_IMAGE_ARCHIVE" "$tag"
elif command -v docker >/dev/null; then
  docker build -t "$tag" "$ctx"
  [ -n "${KAPPIE_IMAGE_ARCHIVE:-}" ] && docker save -o "$KAPPIE_IMAGE_ARCHIVE" "$tag"
else
  echo "build-image: no buildah, podman or docker; install one (apt-get install buildah)" >&2
  exit 1
fi
echo "==> built $tag" >&2
