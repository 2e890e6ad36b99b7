# The README's first two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint bench clean

$(BIN)/encseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/encseg

setup: $(BIN)/encseg

demo: setup
	$(BIN)/encseg demo --out outputs/demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

# the inner loop: everything but the subprocess, multi-process and training-to-convergence tests
test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) outputs
