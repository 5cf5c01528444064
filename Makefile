# Everything a fresh machine needs: `make demo` (set-up + the main job), `make test` (set-up + checks).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup lint test test-fast demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,bench,postgres]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/mup2 demo

bench: setup
	$(BIN)/python benchmarks/bench_sam.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
