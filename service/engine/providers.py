"""ONNX Runtime execution-provider options chosen for serving on a GPU (CUDA, optionally TensorRT).

onnxruntime's defaults suit one long offline run, not a server:

- CUDA's `cudnn_conv_algo_search` defaults to EXHAUSTIVE: cuDNN benchmarks every convolution
  algorithm the first time it sees each input shape, so the first request of every batch size stalls
  (seconds for resnet50) and the winner can change from run to run. HEURISTIC picks from cuDNN's
  tables at once; the warm-up of every batch size then costs milliseconds.
- The CUDA arena grows by doubling (`kNextPowerOfTwo`), so a peak batch can reserve twice the memory
  it needs; `kSameAsRequested` grows by what is asked.
- TensorRT builds an engine per input-shape profile: without an explicit profile for batch 1..max it
  rebuilds (minutes) whenever a new batch size arrives. The engine and timing caches go into the model
  folder, so a restart reuses them instead of rebuilding.

Only options of providers in the session's list are passed; on CPU none of this applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simpool_serve.service.engine.config import EngineConfig

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TRT_CACHE_DIR = "trt_cache"  # inside the model folder


@dataclass(frozen=True)
class ProviderOptions:
    """The accelerator knobs of `EngineConfig`, plus what a model contributes (input side, largest batch)."""

    device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"
    gpu_mem_limit_mb: int = 0  # 0: no limit
    trt_fp16: bool = True
    trt_cache: bool = True
    io_binding: bool = False
    input_size: int | None = None
    max_batch: int = 1
    # A graph of any size: the smallest side it takes, and the largest view a request may ask for.
    min_side: int | None = None
    max_view_size: int | None = None

    @classmethod
    def from_config(
        cls, config: EngineConfig, input_size: int, max_batch: int, min_side: int | None = None
    ) -> ProviderOptions:
        """`min_side`: given for a graph of any size (its manifest's `min_side`), None for a fixed one."""
        return cls(
            device_id=config.cuda_device_id,
            cudnn_conv_algo_search=config.cuda_conv_algo_search,
            gpu_mem_limit_mb=config.cuda_mem_limit_mb,
            trt_fp16=config.trt_fp16,
            trt_cache=config.trt_cache,
            io_binding=config.io_binding,
            input_size=input_size,
            max_batch=max(1, max_batch),
            min_side=min_side,
            max_view_size=config.max_view_size if min_side is not None else None,
        )

    def cuda(self) -> dict[str, str]:
        opts = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "arena_extend_strategy": "kSameAsRequested",
            # Copies on the compute stream: no extra synchronisation between a copy and its kernel.
            "do_copy_in_default_stream": "1",
        }
        if self.gpu_mem_limit_mb:
            opts["gpu_mem_limit"] = str(self.gpu_mem_limit_mb * 2**20)
        return opts

    def tensorrt(self, model_folder: Path) -> dict[str, str]:
        opts = {"device_id": str(self.device_id), "trt_fp16_enable": _flag(self.trt_fp16)}
        if self.trt_cache:
            cache = str(model_folder / TRT_CACHE_DIR)
            opts |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": cache,
            }
        if self.input_size is not None:
            # One profile for every batch the batcher can form, tuned for the largest at the crop's size
            # (a loaded server); a graph of any size also spans every view a request may ask for, from
            # its smallest side to SIMPOOL_MAX_VIEW_SIZE. Not run on a GPU here: untested.
            s, n = self.input_size, self.max_batch
            low, high = (
                (self.min_side, self.max_view_size) if self.min_side and self.max_view_size else (s, s)
            )
            opts |= {
                "trt_profile_min_shapes": f"images:1x{low}x{low}x3",
                "trt_profile_opt_shapes": f"images:{n}x{s}x{s}x3",
                "trt_profile_max_shapes": f"images:{n}x{high}x{high}x3",
            }
        return opts

    def session_providers(self, names: list[str], model_folder: Path) -> list[tuple[str, dict[str, str]]]:
        """`providers=` for `ort.InferenceSession`: each name with its options (CPU's are empty)."""
        built: dict[str, dict[str, str]] = {CUDA: self.cuda(), TENSORRT: self.tensorrt(model_folder)}
        return [(name, built.get(name, {})) for name in names]


def _flag(value: bool) -> str:
    return "True" if value else "False"
