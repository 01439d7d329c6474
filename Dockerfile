# syntax=docker/dockerfile:1.7
#
# SimPool Serve images. Targets (docker build --target ...):
#   runtime-gpu  (default, last stage)  onnxruntime-gpu on the CUDA + cuDNN runtime base
#   runtime-cpu                         onnxruntime on a plain Python base
# Both hold the exported models under /models and the service only: no torch, no timm.
# Which models are exported at build time is set by the MODELS build argument; see docs/deploy.md.
#
# Base images are pinned by tag; pin them by digest too (image@sha256:...) where builds must be
# bit-for-bit reproducible.

# The current onnxruntime-gpu wheels on PyPI (1.31) link CUDA 13 and cuDNN 9: the base must match
# (CUDA 13 needs host driver >= 580). For a CUDA 12 host, set CUDA_IMAGE to a 12.x cudnn-runtime tag
# and ORT_GPU_VERSION to a release built for CUDA 12 and cuDNN 9 (1.22.0, for example).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
ARG ORT_GPU_VERSION=1.31.1

# ---------------------------------------------------------------------------------------------
# Checkpoints to export: deploy/checkpoints/ of the build context, or any folder given with
#   docker build --build-context checkpoints=/path/to/checkpoints --build-arg MODELS=... .
# It is bind-mounted into the export step only, so no checkpoint lands in a runtime layer.
FROM scratch AS checkpoints
COPY deploy/checkpoints/ /

# ---------------------------------------------------------------------------------------------
# The project as a wheel (no dependencies), shared by the export and runtime stages.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY simpool_serve/ simpool_serve/
COPY models/ models/
COPY export/ export/
COPY service/ service/
COPY client/ client/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------------
# Export stage: torch + timm, runs simpool-export. Nothing of it but /models reaches the runtime.
FROM ${PYTHON_IMAGE} AS export
# CPU wheels of torch from the PyTorch index: ~200 MB instead of ~1 GB plus ~3 GB of CUDA
# libraries that exporting does not need. Set TORCH_INDEX_URL= (empty) to take PyPI's wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# Dependencies first (from pyproject.toml alone), so that code changes keep this layer cached.
COPY pyproject.toml deploy/pyproject_deps.py ./
RUN python pyproject_deps.py pyproject.toml export cpu > requirements.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.txt
COPY --from=wheel /dist/ /dist/
RUN pip install --no-deps /dist/*.whl
# MODELS: space-separated NAME=ARCH[=CHECKPOINT]; CHECKPOINT is a URL, or a path inside the
# `checkpoints` build context; without one the model is exported with random weights (seed 0).
ARG MODELS="resnet50_simpool=resnet50 vit_small_simpool=vit_small_patch16_224"
# Extra simpool-export flags for every model, e.g. "--fp16" or "--gamma none".
ARG EXPORT_ARGS=""
COPY --chmod=755 deploy/export-models.sh /usr/local/bin/export-models
RUN --mount=type=bind,from=checkpoints,target=/checkpoints \
    export-models /models

# ---------------------------------------------------------------------------------------------
# The models the runtime images hold: those the export stage made, or a folder of models exported
# elsewhere (one sub-folder per model, as simpool-export writes them), given with
#   docker build --build-context models=/path/to/model_repository ...
# which replaces this stage, so that the export stage (torch, timm) is not built at all.
FROM scratch AS models
COPY --from=export /models/ /

# ---------------------------------------------------------------------------------------------
# CPU runtime: plain Python base with onnxruntime.
FROM ${PYTHON_IMAGE} AS runtime-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 simpool \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin simpool
WORKDIR /opt/simpool
COPY pyproject.toml deploy/pyproject_deps.py ./
RUN python pyproject_deps.py pyproject.toml cpu > requirements.txt \
    && pip install -r requirements.txt
COPY --from=wheel /dist/ /dist/
RUN pip install --no-deps /dist/*.whl && rm -rf /dist
COPY --from=models / /models
ENV SIMPOOL_MODEL_DIR=/models SIMPOOL_HOST=0.0.0.0 SIMPOOL_PORT=8000 \
    SIMPOOL_PROVIDERS=CPUExecutionProvider
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000 8001
# /readyz answers 200 once every model is loaded and warmed; urllib raises on 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SIMPOOL_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["simpool-serve"]

# ---------------------------------------------------------------------------------------------
# GPU runtime: CUDA + cuDNN runtime libraries from NVIDIA's image, onnxruntime-gpu from PyPI.
FROM ${CUDA_IMAGE} AS runtime-gpu
ARG ORT_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DEBIAN_FRONTEND=noninteractive PATH=/opt/venv/bin:$PATH
# Ubuntu 24.04's Python is 3.12, the same minor version as the export stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 simpool \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin simpool
WORKDIR /opt/simpool
COPY pyproject.toml deploy/pyproject_deps.py ./
RUN python pyproject_deps.py pyproject.toml gpu > requirements.txt \
    && pip install -r requirements.txt "onnxruntime-gpu==${ORT_GPU_VERSION}"
COPY --from=wheel /dist/ /dist/
RUN pip install --no-deps /dist/*.whl && rm -rf /dist
COPY --from=models / /models
ENV SIMPOOL_MODEL_DIR=/models SIMPOOL_HOST=0.0.0.0 SIMPOOL_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SIMPOOL_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["simpool-serve"]
