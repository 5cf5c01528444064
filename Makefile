# Everything a fresh machine needs: `make demo` (set-up + the main job), `make test` (set-up,
# PostgreSQL for the sweep tests, then every check, the docs site's strict build included).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

FMNIST_DIR := $(or $(MUP2_FASHION_MNIST_DIR),/usr/share/datasets/fashion-mnist)

.PHONY: setup data postgres lint docs test test-fast demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,bench,postgres,hf,lightning,accelerate,docs]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# The documentation site (mkdocs.yml) into site/: --strict, so a broken link or API reference
# (a `::: mup2.x` that does not resolve) fails. NO_MKDOCS_2_WARNING: Material's banner.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: postgres lint docs
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Fashion-MNIST from Debian's dataset-fashion-mnist package when it is missing (needs root).
data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or set" \
		     "MUP2_FASHION_MNIST_DIR to a directory with the four IDX files"; exit 2; \
	fi

# PostgreSQL for the sweep tests (they start a throwaway server on 127.0.0.1), from Debian's
# postgresql package when tests/sweep/conftest.py finds no server binaries (needs root).
postgres: setup
	@if $(BIN)/python tests/sweep/conftest.py; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing PostgreSQL for the sweep tests (apt-get install postgresql)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
		echo "PostgreSQL is missing, and the sweep tests need it: run 'sudo apt-get install" \
		     "postgresql' (or your system's package with initdb and pg_ctl on PATH), then" \
		     "'make test' again; 'make test-fast' runs without it"; exit 2; \
	fi

demo: setup data
	$(BIN)/mup2 demo

bench: setup
	$(BIN)/python benchmarks/bench_sam.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
