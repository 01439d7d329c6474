"""The INT8 quality gate: the quantized graph must answer as the fp32 graph does on unseen images.

Both graphs run in onnxruntime (CPU) on the held-out images, which the quantizer never saw. The
measure is the lowest cosine between an image's two embeddings (the embedding is what a retrieval
index stores, and cosine is how it is compared); with a classifier, also the fraction of images
whose top-1 class is the same. The gate is the cosine: top-1 agreement on a handful of images moves
in steps of 1/n and is reported, not gated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simpool_serve.export.checks import check_session

MIN_COSINE = 0.99


@dataclass(frozen=True)
class Agreement:
    images: int
    min_cosine: float
    mean_cosine: float
    top1_agreement: float | None  # None without a classifier
    attention_max_abs: float  # largest |int8 - fp32| of any attention weight


def _run(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    session = check_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": pixels}), strict=True))


def compare(fp32_path: Path, int8_path: Path, pixels: np.ndarray) -> Agreement:
    """Cosines and top-1 agreement of the two graphs on the same prepared images."""
    ref, got = _run(fp32_path, pixels), _run(int8_path, pixels)
    a, b = ref["embedding"].astype(np.float64), got["embedding"].astype(np.float64)
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    top1 = None
    if "logits" in ref:
        top1 = float(np.mean(ref["logits"].argmax(axis=1) == got["logits"].argmax(axis=1)))
    attention = float(np.abs(ref["attention"] - got["attention"]).max())
    return Agreement(len(pixels), float(cos.min()), float(cos.mean()), top1, attention)
