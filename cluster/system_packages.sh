#!/usr/bin/env bash
# Install the Debian packages a group of tools needs, where a tool is missing and we are root;
# otherwise say which packages to install. Groups:
#   sandbox   bwrap and strace: the sandboxes, and the tiny model's build (its warm start runs
#             reference programs in bwrap), so `make test` installs them first, alone
#   rest      the Docker engine, debootstrap (the sandbox image) and Debian's Chromium (the
#             viewer's browser tests), installed while the venv and the model are made
# Usage: cluster/system_packages.sh sandbox|rest|all
set -euo pipefail
case "${1:-all}" in
  sandbox) wanted="bwrap:bubblewrap strace:strace" ;;
  rest) wanted="dockerd:docker.io debootstrap:debootstrap chromium:chromium chromedriver:chromium-driver" ;;
  all) wanted="bwrap:bubblewrap strace:strace dockerd:docker.io debootstrap:debootstrap chromium:chromium chromedriver:chromium-driver" ;;
  *) echo "usage: $0 sandbox|rest|all" >&2; exit 2 ;;
esac
missing=""
for pair in $wanted; do
  command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair#*:}"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages:$missing (sudo apt-get install -y$missing)"
  exit 0
fi
echo "installing$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
