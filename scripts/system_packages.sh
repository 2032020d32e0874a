#!/usr/bin/env bash
# The system tools the test suite runs for real (docs/architecture.md "Testing"): the one list of them.
# Installs the missing ones with apt when run as root; otherwise prints the exact command and fails, so
# `make test` never quietly tests less than CI does.
set -euo pipefail

# package:program, where program is what the tests look for (Debian puts some in /usr/sbin)
TOOLS=(
  redis-server:redis-server
  nginx:nginx
  chromium:chromium
  prometheus:prometheus
  prometheus:promtool
  podman:podman
  debootstrap:debootstrap
  runc:runc
  curl:curl
)

found() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
for entry in "${TOOLS[@]}"; do
  package=${entry%%:*} program=${entry#*:}
  if ! found "$program" && [[ " ${missing[*]-} " != *" $package "* ]]; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

command=(apt-get install -y --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing system tools: ${missing[*]}" >&2
  echo "install them, then run make again:  sudo apt-get update && sudo ${command[*]}" >&2
  exit 1
fi
echo "installing system tools: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
"${command[@]}" -qq >/dev/null
