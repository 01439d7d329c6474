"""The parity gate: the written ONNX file must compute what the PyTorch model computes.

Runs the graph in onnxruntime (CPU) on fresh random uint8 images at batch sizes 1 and 3 and compares
every output with PyTorch. The error measure is max|onnx - torch| / max|torch| per output, worst over
both batch sizes: relative to the output's scale, so a near-zero element cannot blow it up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from simpool_serve.export.graph import ServingGraph
from simpool_serve.spec import INPUT

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    scale = float(np.abs(ref64).max())
    diff = float(np.abs(got.astype(np.float64) - ref64).max())
    return diff / scale if scale > 0 else diff


def check_parity(
    onnx_path: Path,
    reference: ServingGraph,
    image_size: int,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int | None = None,
) -> dict[str, float]:
    """Worst relative error per output name over the given batch sizes."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = dict.fromkeys(names, 0.0)
    for n in batch_sizes:
        images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
        got = session.run(names, {INPUT: images})
        with torch.no_grad():
            ref = reference(torch.from_numpy(images))
        for name, g, r in zip(names, got, ref, strict=True):
            if g.shape != tuple(r.shape):
                raise AssertionError(f"{name}: ONNX shape {g.shape} != PyTorch shape {tuple(r.shape)}")
            worst[name] = max(worst[name], relative_error(g, r.float().numpy()))
    return worst
