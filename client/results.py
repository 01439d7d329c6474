"""Typed answers: numpy arrays in request order, plus the fingerprint an index must store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageFailure:
    """One image the service could not use (only with on_error="skip"); `index` is into your input list."""

    index: int
    detail: str


@dataclass(frozen=True)
class _Result:
    model: str
    fingerprint: str
    errors: tuple[ImageFailure, ...] = field(default=(), kw_only=True)

    @property
    def failed(self) -> set[int]:
        return {e.index for e in self.errors}


@dataclass(frozen=True)
class EmbedResult(_Result):
    """`embeddings` is float32 [N, D]; rows of failed images are NaN so positions never shift."""

    embeddings: np.ndarray
    normalized: bool

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that hold an embedding."""
        return ~np.isnan(self.embeddings).any(axis=1)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class AttentionResult(_Result):
    """`attention` is float32 [N, h, w], each map summing to 1; rows of failed images are NaN.

    `boxes[i]` is (x0, y0, x1, y1) in image i's upright pixels (x1, y1 exclusive), around where its
    attention lies; None when that image failed."""

    attention: np.ndarray
    grid: tuple[int, int]
    boxes: list[tuple[int, int, int, int] | None]

    def __len__(self) -> int:
        return int(self.attention.shape[0])


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str | None
    score: float


@dataclass(frozen=True)
class ClassifyResult(_Result):
    """`predictions[i]` is the top-k of image i, best first, or None when that image failed."""

    predictions: list[list[Prediction] | None]

    def __len__(self) -> int:
        return len(self.predictions)


@dataclass(frozen=True)
class ModelInfo:
    """One entry of GET /models; `manifest` keeps every field the service sent."""

    name: str
    fingerprint: str
    default: bool
    embedding_dim: int | None
    num_classes: int | None
    manifest: dict[str, Any]

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ModelInfo:
        return cls(
            name=str(entry["name"]),
            fingerprint=str(entry.get("fingerprint", "")),
            default=bool(entry.get("default", False)),
            embedding_dim=entry.get("embedding_dim"),
            num_classes=entry.get("num_classes"),
            manifest=dict(entry),
        )
