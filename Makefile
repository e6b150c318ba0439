# The two user-facing entry points: `make demo` and `make test` (see README.md).
VENV ?= .venv
PYTHON ?= python3
# The CPU wheel keeps installs small; use `make demo TORCH=torch` for your platform's default (CUDA) build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"

demo: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/physmorph morph --out outputs/demo

test: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest
