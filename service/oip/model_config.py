"""A model's Triton configuration, built from its manifest: served by `/v2/models/{m}/config` as JSON and
written by `simpool-export --triton-repo` as `config.pbtxt`. One builder, so the two never disagree.

No torch, no protobuf: the configuration is a plain dict in protobuf's JSON field names (what Triton's
own `/config` endpoint answers), and `to_pbtxt` writes it in protobuf's text format. The test suite
parses the text against Triton's `ModelConfig` message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simpool_serve.spec import Manifest, fingerprint

PLATFORM = "onnxruntime_onnx"
DEFAULT_MAX_BATCH_SIZE = 32
# How long Triton's dynamic batcher holds a request for batch-mates: our own service's default window.
DEFAULT_QUEUE_DELAY_US = 5000
TRT_WORKSPACE_BYTES = 1 << 30


class Symbol(str):
    """An enum value (`TYPE_UINT8`): a plain string in JSON, unquoted in protobuf text."""


def triton_config(
    manifest: Manifest,
    name: str,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    tensorrt: bool = False,
    trt_cache_dir: str = "/tmp/simpool-trt-cache",
) -> dict[str, Any]:
    """The ModelConfig of the model's graph under Triton's ONNX Runtime backend.

    Dims leave out the batch axis (Triton adds it, up to `max_batch_size`). The warm-up runs a zero
    batch of 1 and of `max_batch_size` before Triton reports the model ready, as our service warms its
    own sessions. `tensorrt` adds the TensorRT accelerator (FP16, engines cached in `trt_cache_dir` so
    a restart does not rebuild them for minutes).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    size = manifest.input_size
    pixels = [size, size, 3]
    outputs = [
        _tensor("embedding", "TYPE_FP32", [manifest.embedding_dim]),
        _tensor("attention", "TYPE_FP32", list(manifest.grid)),
    ]
    if manifest.num_classes > 0:
        outputs.append(_tensor("logits", "TYPE_FP32", [manifest.num_classes]))
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORM,
        "max_batch_size": max_batch_size,
        "input": [_tensor("images", "TYPE_UINT8", pixels)],
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": DEFAULT_QUEUE_DELAY_US},
        "model_warmup": [
            {
                "name": f"zeros_batch_{n}",
                "batch_size": n,
                "inputs": {"images": {"data_type": Symbol("TYPE_UINT8"), "dims": pixels, "zero_data": True}},
            }
            for n in sorted({1, max_batch_size})
        ],
        # What our service calls the fingerprint: a Triton client can read it from the config.
        "parameters": {"simpool_fingerprint": {"string_value": fingerprint(manifest)}},
    }
    if tensorrt:
        accelerator = {
            "name": "tensorrt",
            "parameters": {
                "precision_mode": "FP16",
                "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": trt_cache_dir,
            },
        }
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    return config


def _tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": Symbol(dtype), "dims": [int(d) for d in dims]}


# Fields that are protobuf maps in ModelConfig: their dict keys are data, written as `key`/`value` pairs.
_MAP_FIELDS = frozenset({"parameters", "inputs"})


def to_pbtxt(config: Mapping[str, Any]) -> str:
    """The configuration in protobuf text format, as Triton reads `config.pbtxt`."""
    lines: list[str] = []
    _message(config, lines, 0)
    return "\n".join(lines) + "\n"


def _message(fields: Mapping[str, Any], lines: list[str], depth: int) -> None:
    pad = "  " * depth
    for key, value in fields.items():
        if key in _MAP_FIELDS and isinstance(value, Mapping):
            for k, v in value.items():
                lines.append(f"{pad}{key} {{")
                lines.append(f"{pad}  key: {_scalar(k)}")
                _field("value", v, lines, depth + 1)
                lines.append(f"{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for item in value:
                _field(key, item, lines, depth)
        else:
            _field(key, value, lines, depth)


def _field(key: str, value: Any, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    if isinstance(value, Mapping):
        lines.append(f"{pad}{key} {{")
        _message(value, lines, depth + 1)
        lines.append(f"{pad}}}")
    elif isinstance(value, list):
        lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
    else:
        lines.append(f"{pad}{key}: {_scalar(value)}")


def _scalar(value: Any) -> str:
    if isinstance(value, Symbol):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
