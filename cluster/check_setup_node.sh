#!/usr/bin/env bash
# Install a node from scratch, as `ray up` does on a new machine, in a fresh container: the
# sandbox base image (Debian bookworm: python3 and little else), this checkout copied in without
# its .venv, then cluster/setup_node.sh, then `ouroboros doctor` and an evaluation round of the
# smoke config with the default policy (SmolLM2-135M, which setup_node.sh prepares) on the
# node's own Ray, its sandboxes in bwrap.
#
# The node is installed without its own Docker engine (OUROBOROS_NODE_DOCKER=0): an engine
# inside a container needs a privileged container, which hosts like ours refuse. The container
# gets what bwrap needs instead: CAP_SYS_ADMIN and no seccomp or AppArmor filter for its
# namespaces, and an unmasked /proc, which it mounts afresh in each sandbox.
#
#   sudo cluster/check_setup_node.sh        # about 10 minutes; prints the time each part took
#
# This machine's pip settings and local wheels go in as they are (a cloud node has its own);
# the Debian mirror and PyPI are reached over the container's network.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${OUROBOROS_SANDBOX_IMAGE:-ouroboros-sandbox:base}
docker image inspect "$IMAGE" >/dev/null 2>&1 || { echo "no $IMAGE: run cluster/build_sandbox_image.sh first" >&2; exit 1; }
mounts=(-v "$REPO:/src:ro")
# The host's CA bundle too, where pip is told to use one (a TLS-inspecting proxy's CA is in it).
for path in /opt/wheels /etc/pip.conf /etc/xdg/pip ${PIP_CERT:-}; do
  [ -e "$path" ] && mounts+=(-v "$path:$path:ro")
done
for var in PIP_FIND_LINKS PIP_CERT PIP_DEFAULT_TIMEOUT PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
  [ -n "${!var:-}" ] && mounts+=(-e "$var=${!var}")
done
name=ouroboros-setup-check-$$
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
docker run --name "$name" --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
  --network bridge "${mounts[@]}" -e DEBIAN_FRONTEND=noninteractive -e OUROBOROS_NODE_DOCKER=0 "$IMAGE" bash -euc '
    t0=$(date +%s)
    # A cloud image has these; the sandbox image does not.
    apt-get update -qq && apt-get install -y -qq git ca-certificates >/dev/null
    # The checkout as git would give it: without the venv, runs and caches of this machine.
    mkdir /node && cd /src && tar --exclude=./.venv --exclude=./runs --exclude=./.pytest_cache -cf - . | tar -C /node -xf -
    cd /node
    t1=$(date +%s); cluster/setup_node.sh /node; t2=$(date +%s)
    .venv/bin/ouroboros doctor
    .venv/bin/ouroboros run configs/smoke.yaml --rounds 0 --set policy.model=smollm2-135m-instruct \
      --set env.heldout_tasks=2 --set generator.max_new_tokens=48 --out /tmp/check
    t3=$(date +%s)
    echo "setup_node.sh: $((t2 - t1)) s; doctor and an evaluation round: $((t3 - t2)) s; in all $((t3 - t0)) s"'
