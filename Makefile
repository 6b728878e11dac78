# Two entry points (see README): `make quickstart` and `make test`. Both create the virtual
# environment on first use. TORCH selects the torch build: the CPU wheel by default, so an
# install never pulls several GB of CUDA packages by accident; on a GPU server use e.g.
#   make quickstart TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install quickstart test lint gpu-wheels

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

quickstart: $(BIN)/.installed
	$(OFFLINE) $(BIN)/ssmlora fit --config configs/quickstart.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(OFFLINE) $(BIN)/python -m pytest

# Wheels of the packages the GPU machine lacks, into .whl/ for benchmarks/gpu_check.sh (see
# benchmarks/RESULTS.md for the device command).
gpu-wheels:
	PYTHON=$(PYTHON) bash benchmarks/gpu_wheels.sh
