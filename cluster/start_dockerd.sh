#!/usr/bin/env bash
# Start a Docker engine in the background if none answers, and wait until it does.
# For machines without systemd (CI containers, fresh VMs); where systemd runs docker, this only
# checks that it answers. Logs go to ${DOCKERD_LOG:-/var/log/ouroboros-dockerd.log}.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null; then
  echo "dockerd is not installed: apt-get install -y docker.io" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "no Docker engine answers and starting one needs root: sudo $0 (or sudo systemctl start docker)" >&2
  exit 1
fi
log=${DOCKERD_LOG:-/var/log/ouroboros-dockerd.log}
# setsid: the engine must outlive the make/pytest process that started it.
setsid nohup dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 0.5
done
echo "dockerd did not answer within 30 s; its log ($log) ends with:" >&2
tail -n 20 "$log" >&2
exit 1
