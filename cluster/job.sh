#!/usr/bin/env bash
# Entry point for `ray job submit`: runs the loop against the cluster the job was submitted to.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/ouroboros run "$@"
