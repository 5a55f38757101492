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

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The main job on the embedded default: validate the bundled data, one ICFT run, then ICFT against the
# baselines (several seeds), ending with the comparison table.
demo: $(STAMP)
	$(VENV)/bin/icft data validate src/icft/bundled/data
	$(VENV)/bin/icft train --config configs/demo.yaml --output-dir runs/demo
	$(VENV)/bin/icft compare --config configs/compare-demo.yaml --output-dir runs/compare-demo

test: $(STAMP)
	$(PY) -m pytest -q

# The quick tier for the inner loop: everything not marked slow (no real training runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
