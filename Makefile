# SimPool Serve: `make serve` and `make test` on a fresh machine (Python 3.11+, make).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# onnxruntime flavour for the service: cpu (default) or gpu.
RUNTIME ?= cpu
EXTRAS ?= $(RUNTIME),export,ray,vectordb,dev
# torch for the export extra. PyPI's build carries CUDA: about 3.2 GB of NVIDIA libraries in .venv,
# needed only to export on a GPU. On a CPU-only host take the CPU build from PyTorch's own index:
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu      (see README)
TORCH_INDEX_URL ?=
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))$(if $(TORCH_INDEX_URL),-torch-index)
MODEL_REPOSITORY ?= model_repository
HOST ?= 0.0.0.0
PORT ?= 8000
DEFAULT_MODELS := $(MODEL_REPOSITORY)/resnet50_simpool/manifest.json $(MODEL_REPOSITORY)/vit_small_simpool/manifest.json

.PHONY: install serve test lint models bench soak clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes (or the extras do).
$(STAMP): pyproject.toml | $(BIN)/python
	@if [ -z "$(TORCH_INDEX_URL)" ] && [ ! -e /proc/driver/nvidia ] && ! $(BIN)/python -c 'import torch' 2>/dev/null; then \
		echo "note: no NVIDIA GPU here, but PyPI's torch brings ~3.2 GB of CUDA libraries into $(VENV)."; \
		echo "      To avoid them: make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (README)"; \
	fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		$(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

# The default models: untrained (random weights, seed 0) until you export real checkpoints.
$(MODEL_REPOSITORY)/resnet50_simpool/manifest.json: | $(STAMP)
	$(BIN)/simpool-export --arch resnet50 --random-init --seed 0 --name resnet50_simpool \
		--out $(MODEL_REPOSITORY)/resnet50_simpool

$(MODEL_REPOSITORY)/vit_small_simpool/manifest.json: | $(STAMP)
	$(BIN)/simpool-export --arch vit_small_patch16_224 --random-init --seed 0 --name vit_small_simpool \
		--out $(MODEL_REPOSITORY)/vit_small_simpool

models: $(DEFAULT_MODELS)

serve: $(STAMP) $(DEFAULT_MODELS)
	SIMPOOL_DEFAULT_MODEL=$${SIMPOOL_DEFAULT_MODEL:-resnet50_simpool} \
		$(BIN)/simpool-serve --model-dir $(MODEL_REPOSITORY) --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The unit tier only (tests/unit: fakes and tiny in-memory graphs; no export, no server, no subprocess).
.PHONY: test-fast
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit

# The Dockerfile and docker-compose.yml built and run for real: podman's Docker API + docker-compose,
# as root, with stand-in base images when no registry is reachable (docs/deploy.md).
.PHONY: compose-test
compose-test: $(STAMP)
	SIMPOOL_VENV_BIN=$(abspath $(BIN)) deploy/compose-test/run.sh

bench: $(STAMP) $(DEFAULT_MODELS)
	$(BIN)/python bench/run.py --model-dir $(MODEL_REPOSITORY)

# Mixed traffic on every door for SOAK_S seconds; RSS, descriptors, threads, latency and codes over time.
SOAK_S ?= 600
soak: $(STAMP) $(DEFAULT_MODELS)
	$(BIN)/python bench/soak.py --model-dir $(MODEL_REPOSITORY) --duration $(SOAK_S) --out bench/soak-out

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
