"""PCA whitening of retrieval descriptors, as the paper's `PCA` learns it; fitted once, stored, applied.

Fit: the centred covariance of N L2-normalised descriptors, its eigen-decomposition, eigenvalues floored
at `EIGEN_FLOOR` × the largest, the top D components scaled by eigenvalue^-power. Apply:
L2(W · (x − mean)), optionally keeping only the first components (then L2 again). The fitted result
lives beside the model as `whitening.npz` (the arrays) and `whitening.json` (the settings it was fitted
for and the npz's sha256, which the descriptor's fingerprint covers). numpy only.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simpool_serve.service.engine.errors import Incomplete

NPZ = "whitening.npz"
JSON = "whitening.json"
DEFAULT_DIMS = 256
DEFAULT_POWER = 0.5
EIGEN_FLOOR = 1e-5  # relative to the largest eigenvalue, as the paper's PCA floors them
_ARRAYS = ("mean", "projection", "eigenvalues")


class WhiteningError(ValueError):
    """A whitening that cannot be fitted, read or applied; the message says what to do."""


class TooFewImages(WhiteningError):
    """D components need at least D + 1 descriptors (centring removes one degree of freedom)."""

    def __init__(self, dims: int, count: int) -> None:
        super().__init__(
            f"{dims} whitened dimensions need at least {dims + 1} images; got {count} "
            f"(add images, or ask for at most {max(count - 1, 0)} dimensions)"
        )
        self.dims, self.count, self.needed = dims, count, dims + 1


class WhiteningMissing(WhiteningError):
    """The model folder has no fitted whitening."""


class WhiteningIncomplete(WhiteningError, Incomplete):
    """`whitening.npz` is not the file `whitening.json` names: another fit, or one still being written."""


def round_scales(scales: Sequence[float]) -> list[float]:
    """Scales as settings compare them: rounded to 4 decimals."""
    return [round(float(s), 4) for s in scales]


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class Whitening:
    """A fitted whitening: `projection` [D, d] = diag(eigenvalues^-power) · eigenvectors^T, and `mean` [d]."""

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray  # the kept ones, floored, largest first
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, descriptors: np.ndarray, dimensions: int | None = None) -> np.ndarray:
        """L2(W · (x − mean)) per row (or for one vector), float32; with `dimensions`, only the first
        that many components are kept before the L2 normalisation."""
        x = np.asarray(descriptors, dtype=np.float64)
        if x.shape[-1] != self.mean.shape[0]:
            raise WhiteningError(
                f"descriptors of dimension {x.shape[-1]}; the whitening was fitted on {self.mean.shape[0]}"
            )
        keep = self.dims if dimensions is None else dimensions
        if not 1 <= keep <= self.dims:
            raise WhiteningError(f"dimensions must be between 1 and {self.dims} (the fitted components)")
        out = (x - self.mean) @ self.projection[:keep].T
        return _l2(out).astype(np.float32)

    def mismatch(self, view: str, size: int, scales: Sequence[float]) -> str | None:
        """None when fitted for this view, size and scales; else what differs, fit for a 422's detail."""
        asked = {"view": view, "size": int(size), "scales": round_scales(scales)}
        fitted = {key: self.settings.get(key) for key in asked}
        if fitted == asked:
            return None
        return f"the whitening was fitted for {_describe(fitted)}, the request asks for {_describe(asked)}"


def _describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in settings.items())


def fit(descriptors: np.ndarray, dims: int = DEFAULT_DIMS, power: float = DEFAULT_POWER) -> Whitening:
    """The paper's PCA on N descriptors [N, d] (L2-normalised here first, as the engine gives them)."""
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise WhiteningError(f"expected descriptors as an [N, d] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise WhiteningError("descriptors hold NaN or infinite values")
    count, dim = x.shape
    if dims < 1:
        raise WhiteningError(f"dims must be at least 1, not {dims}")
    if dims > dim:
        raise WhiteningError(f"dims {dims} is more than the descriptor's {dim} dimensions")
    if dims > count - 1:
        raise TooFewImages(dims, count)
    if not math.isfinite(power) or power < 0:
        raise WhiteningError(f"power must be a finite number ≥ 0, not {power}")
    x = _l2(x)
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / count  # the scale cancels in the final L2 normalisation
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, values.max() * EIGEN_FLOOR)
    order = np.argsort(values, kind="stable")[::-1][:dims]
    values, vectors = values[order], vectors[:, order]
    # eigh's signs are arbitrary: make each component's largest entry positive, so refits agree.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dims)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    projection = (values ** (-power))[:, None] * vectors.T
    return Whitening(mean, projection, values)


def _write_atomic(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(
    whitening: Whitening,
    folder: Path | str,
    *,
    view: str,
    size: int,
    scales: Sequence[float],
    count: int,
    power: float,
) -> dict[str, Any]:
    """Writes `whitening.npz` then `whitening.json` (each by rename); returns the settings written.

    The JSON carries the npz's sha256, so a reader that meets a new npz beside an old JSON (between the
    two renames, or after a crash) refuses it rather than serving a mix.
    """
    folder = Path(folder)
    buf = io.BytesIO()
    np.savez(buf, mean=whitening.mean, projection=whitening.projection, eigenvalues=whitening.eigenvalues)
    payload = buf.getvalue()
    settings = {
        "view": view,
        "size": int(size),
        "scales": round_scales(scales),
        "dims": whitening.dims,
        "power": float(power),
        "count": int(count),
        "input_dim": int(whitening.mean.shape[0]),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    _write_atomic(folder / NPZ, payload)
    _write_atomic(folder / JSON, (json.dumps(settings, indent=2) + "\n").encode())
    return settings


def load(folder: Path | str) -> Whitening:
    """Reads a model folder's whitening; `WhiteningMissing` when there is none, `WhiteningError` when its
    files are unreadable, disagree with each other or hold arrays of the wrong shapes."""
    folder = Path(folder)
    npz_path, json_path = folder / NPZ, folder / JSON
    if not json_path.exists() and not npz_path.exists():
        raise WhiteningMissing(f"{folder} has no whitening; fit one with simpool-whiten")
    try:
        settings = json.loads(json_path.read_text())
        payload = npz_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise WhiteningError(
            f"cannot read the whitening in {folder} ({exc}); run simpool-whiten again"
        ) from exc
    if not isinstance(settings, dict) or hashlib.sha256(payload).hexdigest() != settings.get("sha256"):
        raise WhiteningIncomplete(f"{npz_path} does not match {json_path}; run simpool-whiten again")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            mean, projection, values = (np.asarray(npz[key], dtype=np.float64) for key in _ARRAYS)
    except Exception as exc:
        raise WhiteningError(
            f"{npz_path} is not a readable whitening ({exc}); run simpool-whiten again"
        ) from exc
    if (
        mean.ndim != 1
        or projection.ndim != 2
        or projection.shape[1] != mean.shape[0]
        or values.shape != (projection.shape[0],)
        or projection.shape[0] != settings.get("dims")
        or not (np.isfinite(mean).all() and np.isfinite(projection).all())
    ):
        raise WhiteningError(f"{npz_path} holds arrays of the wrong shapes; run simpool-whiten again")
    return Whitening(mean, projection, values, settings)


def sha256_of(folder: Path | str) -> str:
    """The fitted whitening's identity for a fingerprint: the npz's sha256 as its JSON records it."""
    return str(load(folder).settings["sha256"])
