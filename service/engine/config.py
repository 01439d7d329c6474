"""The engine's own configuration: repository, batching, limits, threads, providers; frozen once built.

Every field is also the environment variable `SIMPOOL_<NAME>`, so `EngineConfig()` is the engine the
service would run in this environment (`simpool-embed --local` builds it so). The server's `Settings`
extends it with what only a server has (address, API key, connections, logs) and hands the engine
`settings.engine_config()`: the engine never sees a server setting.

The thread rules (`resolved_*`) live here, with why; `ThreadPlan` applies them once at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from simpool_serve import spec
from simpool_serve.service.engine.limits import Limits
from simpool_serve.service.engine.providers import CPU


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class EngineConfig(BaseSettings):
    """What the engine needs to know, validated once; each field is also `SIMPOOL_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SIMPOOL_", extra="ignore", frozen=True)

    # Where the models are and which one answers requests that name none.
    model_dir: Path = Field(Path("model_repository"), description="Folder with one sub-folder per model.")
    default_model: str | None = Field(
        None,
        description="Model used when a request names none; default: the only model, or the first by name.",
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="How models come and go (as Triton's --model-control-mode): none = the folders found at "
        "start; poll = rescan the model directory every SIMPOOL_POLL_S; explicit = the repository API and "
        "SIMPOOL_LOAD_MODELS only.",
    )
    poll_s: float = Field(5.0, gt=0, le=3600, description="Seconds between rescans under model_control=poll.")
    load_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Folders loaded at start under model_control=explicit, comma-separated.",
    )

    # Batching and back-pressure.
    max_batch_size: int = Field(
        0, ge=0, le=1024, description="Most images per executed batch; 0 = 4 on CPU, 32 on a GPU."
    )
    max_batch_delay_ms: float = Field(
        5.0, ge=0, description="Longest an image waits for batch-mates while the model is busy."
    )
    max_queue: int = Field(256, ge=1, description="Most images waiting per model; beyond it, 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per-request deadline; beyond it, 504.")
    unready_after_failed_batches: int = Field(
        3,
        ge=0,
        description="Consecutive failed batches of one model after which /readyz answers 503 (a success "
        "makes it ready again); 0 = never.",
    )

    # Limits checked before any pixel is decoded.
    max_images_per_request: int = Field(spec.MAX_IMAGES_PER_REQUEST, ge=1)
    max_image_bytes: int = Field(spec.MAX_IMAGE_BYTES, ge=1, description="Most bytes of one encoded image.")
    max_request_bytes: int = Field(
        spec.MAX_REQUEST_BYTES, ge=1, description="Most bytes of one request body (base64 included)."
    )
    max_image_pixels: int = Field(
        spec.MAX_IMAGE_PIXELS, ge=1, description="Most pixels (width × height) of one image."
    )
    jpeg_draft: bool = Field(True, description="Let JPEG decoding skip detail the resize would discard.")
    max_view_size: int = Field(
        1024, ge=32, description="Largest `size` (longer side) a request's `full` view may ask for."
    )

    # Runtime and threads.
    providers: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="ONNX Runtime providers, comma-separated; default: CUDA if available, else CPU.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per model; 0 = auto (see docs/service.md)."
    )
    inference_lanes: int = Field(
        0,
        ge=0,
        le=64,
        description="Batches one model runs at once under load, each on its share of the intra-op threads; "
        "0 = auto (2 on CPU with 2 or more intra-op threads, else 1; see docs/service.md).",
    )
    decode_workers: int = Field(
        0, ge=0, description="Threads decoding images; 0 = auto (see docs/service.md)."
    )
    ort_spinning: bool = Field(
        True,
        description="Let ONNX Runtime's threads spin briefly between operators instead of sleeping "
        "(a lone request on an idle CPU runs ~15 ms faster; idle cost measured nil).",
    )

    # GPU providers (options of the CUDA and TensorRT providers; see service/engine/providers.py).
    cuda_device_id: int = Field(0, ge=0, description="GPU the CUDA and TensorRT providers run on.")
    cuda_conv_algo_search: Literal["HEURISTIC", "DEFAULT", "EXHAUSTIVE"] = Field(
        "HEURISTIC",
        description="cuDNN convolution algorithm choice; EXHAUSTIVE benchmarks on the first batch of "
        "every size (a stalled first request), HEURISTIC does not.",
    )
    cuda_mem_limit_mb: int = Field(0, ge=0, description="CUDA memory arena limit per session; 0 = none.")
    trt_fp16: bool = Field(True, description="TensorRT may run layers in half precision.")
    trt_cache: bool = Field(
        True, description="TensorRT engine and timing caches in the model folder (trt_cache/)."
    )
    io_binding: bool = Field(
        False, description="Run GPU sessions through I/O binding (outputs written straight to host memory)."
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            items = [p.strip() for p in value.split(",") if p.strip()]
            return items or None
        return value

    @field_validator("load_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("model_control", mode="before")
    @classmethod
    def _mode_lower(cls, value: object) -> object:  # not `_lower`: Settings has its own of that name
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("default_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("cuda_conv_algo_search", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def limits(self) -> Limits:
        """The request limits every door and the engine check, with one message each."""
        return Limits(
            max_images=self.max_images_per_request,
            max_request_bytes=self.max_request_bytes,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
        )

    def resolved_max_batch_size(self, provider: str) -> int:
        """On CPU, batches barely raise throughput (measured: 2 cores, resnet50) but add latency."""
        if self.max_batch_size:
            return self.max_batch_size
        return 4 if provider == CPU else 32

    def resolved_decode_workers(self, gpu: bool = False) -> int:
        """With a GPU, decoding is the CPU's main job; on CPU it takes a quarter of the cores (≥ 1)."""
        if self.decode_workers:
            return self.decode_workers
        cores = available_cores()
        return max(1, cores - 1) if gpu else max(1, cores // 4)

    def resolved_intra_op_threads(self, gpu: bool = False) -> int:
        """On CPU, inference gets the cores decoding does not (all of them on ≤ 2 cores: decoding is
        brief, so sharing a core with it beats halving inference)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        if gpu:
            return 1
        cores = available_cores()
        return cores if cores <= 2 else max(1, cores - self.resolved_decode_workers())

    def resolved_inference_lanes(self, gpu: bool = False) -> int:
        """On ≤ 2 cores, two batches at once on one thread each beat one batch on two threads once
        decoding and HTTP share those cores: a preempted thread stalls its partner at every operator
        (measured: resnet50, 2 cores, 32 clients, 47-48 vs 43-45 images/s). With more cores the
        decode pool has cores of its own, and a GPU runs one batch at a time: one lane."""
        if self.inference_lanes:
            return self.inference_lanes
        if gpu or available_cores() > 2:
            return 1
        return min(2, self.resolved_intra_op_threads(gpu=gpu))

    def lane_threads(self, gpu: bool = False) -> int:
        """Intra-op threads of each lane's session (the lanes split the model's threads)."""
        return max(1, self.resolved_intra_op_threads(gpu=gpu) // self.resolved_inference_lanes(gpu=gpu))

    def shared_compute_pool(self, gpu: bool = False) -> bool:
        """On CPU with single-thread lanes, decoding and inference share one pool of threads, so the
        cores are never asked for more work at once than they can run: a decode then waits for a
        free thread instead of preempting an inference run (measured: +2 % images/s, 2 cores)."""
        return not gpu and self.resolved_inference_lanes(gpu=gpu) > 1 and self.lane_threads(gpu=gpu) == 1
