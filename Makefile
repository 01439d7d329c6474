# SimPool Serve: `make serve` and `make test` on a fresh machine (Python 3.11+, make).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# onnxruntime flavour for the service: cpu (default) or gpu.
RUNTIME ?= cpu
# `make install` (and `make test`): every extra. `make serve`: only what serving and exporting need,
# unless everything is already installed.
EXTRAS ?= $(RUNTIME),export,embed,ray,vectordb,dev
SERVE_EXTRAS ?= $(RUNTIME),export
# torch for the export extra. PyPI's build carries CUDA: about 3.2 GB of NVIDIA libraries in .venv,
# needed only to export on a GPU. On a CPU-only host take the CPU build from PyTorch's own index:
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu      (see README)
TORCH_INDEX_URL ?=
comma := ,
stamp_of = $(VENV)/.installed-$(subst $(comma),-,$(1))$(if $(TORCH_INDEX_URL),-torch-index)
STAMP := $(call stamp_of,$(EXTRAS))
SERVE_STAMP := $(call stamp_of,$(SERVE_EXTRAS))
MODEL_REPOSITORY ?= model_repository
# `make serve` listens where SIMPOOL_HOST / SIMPOOL_PORT say (as simpool-serve itself does), else on
# 0.0.0.0:8000; `make serve PORT=8080 HOST=127.0.0.1` overrides both.
HOST := $(or $(SIMPOOL_HOST),0.0.0.0)
PORT := $(or $(SIMPOOL_PORT),8000)
DEFAULT_MODELS := $(MODEL_REPOSITORY)/resnet50_simpool/manifest.json $(MODEL_REPOSITORY)/vit_small_simpool/manifest.json

.PHONY: install serve test lint models bench soak clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip, with its progress shown; $(1): the extras. Re-run only when pyproject.toml changes.
define pip_install
	@if [ -z "$(TORCH_INDEX_URL)" ] && [ ! -e /proc/driver/nvidia ] && ! $(BIN)/python -c 'import torch' 2>/dev/null; then \
		echo "note: no NVIDIA GPU here, but PyPI's torch brings ~3.2 GB of CUDA libraries into $(VENV)."; \
		echo "      To avoid them: make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (README)"; \
	fi
	@echo "installing simpool-serve with the extras [$(1)] into $(VENV) (the first time: a few minutes, torch is large)"
	$(BIN)/python -m pip install --progress-bar on --disable-pip-version-check \
		$(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) -e '.[$(1)]'
endef

$(STAMP): pyproject.toml | $(BIN)/python
	$(call pip_install,$(EXTRAS))
	rm -f $(VENV)/.installed-*
	touch $@

# Serving needs a subset: nothing to do when everything is installed and up to date.
ifneq ($(SERVE_STAMP),$(STAMP))
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	@if [ -e $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then \
		echo "every extra is installed already ($(STAMP))"; \
	else \
		$(MAKE) --no-print-directory serve-install; \
	fi
	touch $@

.PHONY: serve-install
serve-install: | $(BIN)/python
	$(call pip_install,$(SERVE_EXTRAS))
	rm -f $(VENV)/.installed-*
endif

# The default models: untrained (random weights, seed 0) until you export real checkpoints.
$(MODEL_REPOSITORY)/resnet50_simpool/manifest.json: | $(SERVE_STAMP)
	$(BIN)/simpool-export --arch resnet50 --random-init --seed 0 --name resnet50_simpool \
		--out $(MODEL_REPOSITORY)/resnet50_simpool

$(MODEL_REPOSITORY)/vit_small_simpool/manifest.json: | $(SERVE_STAMP)
	$(BIN)/simpool-export --arch vit_small_patch16_224 --random-init --seed 0 --name vit_small_simpool \
		--out $(MODEL_REPOSITORY)/vit_small_simpool

models: $(DEFAULT_MODELS)

serve: $(SERVE_STAMP) $(DEFAULT_MODELS)
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
# SOAK_RELOAD_S=180: the server polls a copy of the repository, and a new version of the model is
# written every 180 s (a reload soak).
SOAK_S ?= 600
SOAK_RELOAD_S ?= 0
soak: $(STAMP) $(DEFAULT_MODELS)
	$(BIN)/python bench/soak.py --model-dir $(MODEL_REPOSITORY) --duration $(SOAK_S) \
		--reload-every $(SOAK_RELOAD_S) --out bench/soak-out

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
