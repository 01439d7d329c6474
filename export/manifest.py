"""manifest.json: what the service needs to know about a graph without reading it.

The file is built as a `spec.Manifest` (the model the service reads it back with), so a field the
service relies on cannot be missing or of the wrong type; the exporter's extra fields ride along.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from simpool_serve import __version__
from simpool_serve.export.preprocess import Preprocessing
from simpool_serve.spec import SCALE_INPUT, Manifest, sha256_file

# The smallest side the backbone takes after the in-graph rescale: one patch for a ViT, and for a
# CNN the side that still leaves its stride-32 stages a grid.
MIN_SIDE = {"vit": 16, "resnet": 32, "convnext": 32}


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order, as timm ships them."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


@dataclass(frozen=True)
class ManifestInputs:
    name: str
    arch: str
    family: str
    placement: str
    embedding_dim: int
    num_classes: int
    grid: tuple[int, int]
    gamma: float | None
    use_beta: bool
    weights: str  # "checkpoint" or "random"
    checkpoint_sha256: str | None
    checkpoint_format: str | None
    seed: int | None
    opset: int
    precision: str  # "fp32", "fp16" or "int8"
    outputs: list[str]
    quantization: dict[str, object] | None = None  # INT8 only: how it was calibrated and gated


def build_manifest(
    inputs: ManifestInputs, pre: Preprocessing, onnx_path: Path, parity: dict[str, float]
) -> Manifest:
    m = inputs
    return Manifest.model_validate(
        {
            "name": m.name,
            "arch": m.arch,
            "family": m.family,
            "placement": m.placement,
            "embedding_dim": int(m.embedding_dim),
            "num_classes": int(m.num_classes),
            "input_size": int(pre.input_size),
            "grid": [int(m.grid[0]), int(m.grid[1])],
            "mean": [float(v) for v in pre.mean],
            "std": [float(v) for v in pre.std],
            "resize": int(pre.resize),
            "interpolation": pre.interpolation,
            "gamma": None if m.gamma is None else float(m.gamma),
            "use_beta": bool(m.use_beta),
            "weights": m.weights,
            "checkpoint_sha256": m.checkpoint_sha256,
            "checkpoint_format": m.checkpoint_format,
            "seed": m.seed,
            "onnx_sha256": sha256_file(onnx_path),
            "labels": imagenet_labels() if m.num_classes == 1000 else None,
            "opset": int(m.opset),
            "precision": m.precision,
            "outputs": list(m.outputs),
            "parity": {k: float(v) for k, v in parity.items()},
            **({"quantization": dict(m.quantization)} if m.quantization is not None else {}),
            "dynamic_size": True,
            "scale_input": SCALE_INPUT,
            "min_side": MIN_SIDE[m.family],
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "exporter_version": __version__,
            "toolchain": toolchain(),
        }
    )


def toolchain() -> dict[str, str]:
    """Versions that shaped the graph, for reproducing an export."""
    import onnx
    import timm
    import torch

    return {"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__}


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Written beside `path`, then renamed onto it: a server polling the folder reads the whole manifest
    or none, never half of one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(manifest.to_json())
    os.replace(partial, path)
