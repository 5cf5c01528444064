# Everything a fresh machine needs: `make demo` (set-up + the main job), `make test` (set-up + checks).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

FMNIST_DIR := $(or $(MUP2_FASHION_MNIST_DIR),/usr/share/datasets/fashion-mnist)

.PHONY: setup data lint test test-fast demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,bench,postgres,hf,lightning,accelerate]"
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

demo: setup data
	$(BIN)/mup2 demo

bench: setup
	$(BIN)/python benchmarks/bench_sam.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
