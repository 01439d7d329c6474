"""The parity gate: the written ONNX file must compute what the PyTorch model computes.

Runs the graph in onnxruntime (CPU) on fresh random uint8 images and compares every output with
PyTorch: at the export size S×S at batch sizes 1 and 3 (the ``scale`` input left at its default),
and at a non-square size that is not a multiple of the patch, at scale 1 and at scale 1/√2 (the
retrieval protocol's rescale, inside the graph). The error measure is max|onnx - torch| /
max|torch| per output, worst over every check: relative to the output's scale, so a near-zero
element cannot blow it up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from simpool_serve.export.checks import check_session
from simpool_serve.export.graph import ServingGraph
from simpool_serve.spec import INPUT, SCALE_INPUT

# (batch, H, W, scale): other than any export size, with remainder pixels for a stride of 16 or 32.
OTHER_VIEWS: tuple[tuple[int, int, int, float], ...] = ((2, 168, 290, 1.0), (2, 290, 200, 2**-0.5))
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
    other_views: Sequence[tuple[int, int, int, float]] = OTHER_VIEWS,
) -> dict[str, float]:
    """Worst relative error per output name over the export size's batches and the other views."""
    session = check_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = dict.fromkeys(names, 0.0)
    views = [(n, image_size, image_size, None) for n in batch_sizes] + list(other_views)
    for n, h, w, scale in views:
        images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
        feeds: dict[str, np.ndarray] = {INPUT: images}
        if scale is not None:
            feeds[SCALE_INPUT] = np.asarray(scale, dtype=np.float32)
        got = session.run(names, feeds)
        with torch.no_grad():
            ref = reference(torch.from_numpy(images), 1.0 if scale is None else float(np.float32(scale)))
        for name, g, r in zip(names, got, ref, strict=True):
            if g.shape != tuple(r.shape):
                raise AssertionError(f"{name}: ONNX shape {g.shape} != PyTorch shape {tuple(r.shape)}")
            worst[name] = max(worst[name], relative_error(g, r.float().numpy()))
    return worst
