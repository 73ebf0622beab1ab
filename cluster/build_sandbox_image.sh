#!/usr/bin/env bash
# Build the sandbox base image `ouroboros-sandbox:base` without a registry: a Debian bookworm
# rootfs from debootstrap (Debian's mirror is reachable where Docker Hub is not), then
# `docker import`. The rootfs tarball is cached by recipe, so a rebuilt engine re-imports in
# seconds. Usage: cluster/build_sandbox_image.sh [--force]
set -euo pipefail
IMAGE=${OUROBOROS_SANDBOX_IMAGE:-ouroboros-sandbox:base}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Python plus the scientific packages that fit a ~400 MB image. Model-written Dockerfiles
# build on this image, with no network, so what is here is what they can use.
PACKAGES=python3,python3-numpy,python3-scipy,python3-pandas,ca-certificates,procps
RECIPE="v1 $SUITE $PACKAGES"
HASH=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)
CACHE=${OUROBOROS_CACHE:-$HOME/.cache/ouroboros}/images
TARBALL=$CACHE/sandbox-base-$HASH.tar

if [ "${1:-}" != "--force" ] && [ "$(docker image inspect -f '{{ index .Config.Labels "ouroboros.recipe" }}' "$IMAGE" 2>/dev/null)" = "$HASH" ]; then
  echo "$IMAGE is up to date (recipe $HASH)"
  exit 0
fi
if [ ! -s "$TARBALL" ] || [ "${1:-}" = "--force" ]; then
  for tool in debootstrap; do
    command -v $tool >/dev/null || { echo "$tool is not installed: apt-get install -y $tool" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root: sudo $0" >&2; exit 1; }
  mkdir -p "$CACHE"
  rootfs=$(mktemp -d /var/tmp/ouroboros-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap $SUITE ($PACKAGES) into $rootfs"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  # Nothing the sandbox needs: package caches, docs and man pages.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
# The label says which recipe made it. It is not `ouroboros.run`, so the reaper keeps it.
docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8' \
  --change 'WORKDIR /work' \
  --change 'CMD ["python3"]' \
  --change "LABEL ouroboros.image=base ouroboros.recipe=$HASH" \
  "$TARBALL" "$IMAGE" >/dev/null
echo "built $IMAGE (recipe $HASH) from $TARBALL"
