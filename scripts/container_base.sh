#!/bin/sh
# A Python 3.11 base image made with debootstrap (Debian bookworm, minbase + python3 + venv), for building
# the Dockerfile where no image registry is reachable: podman build --build-arg PYTHON_IMAGE=<tag>.
# Made once and reused: an existing tag is kept (docs/deployment.md "Without Docker: podman").
#
#   scripts/container_base.sh [TAG] [MIRROR]
set -eu
tag="${1:-localhost/rsd-python:3.11-bookworm}"
mirror="${2:-http://deb.debian.org/debian}"
if podman image exists "$tag"; then
  echo "$tag exists: reused"
  exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --change 'CMD ["python"]' - "$tag"
echo "$tag made"
