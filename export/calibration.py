"""Calibration images for INT8: files under a folder, prepared exactly as the service prepares requests.

The quantizer learns each activation's range from these batches, so they must be what the graph will
see in service: the same decode, EXIF rotation, resize and centre crop (the service's own
`decode_image`, driven by the model's manifest), not a re-implementation that could drift from it.

The folder is split once, deterministically: every fifth image (in path order) is held out for the
quality gate and never calibrated on, the rest calibrate (at most `--calibration-count` of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from simpool_serve.service.engine.preprocess import ImageError, decode_image, own_pixel_limit
from simpool_serve.spec import Manifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
HOLDOUT_EVERY = 5
MIN_CALIBRATION = 8
MIN_HELD_OUT = 2
MAX_PIXELS = 100_000_000  # a calibration folder is the operator's own: a generous limit
BATCH = 8  # images per calibration batch: the quantizer's memory grows with it, its ranges do not


class CalibrationError(ValueError):
    """A calibration folder that cannot calibrate (missing, too few images, an undecodable file)."""


@dataclass(frozen=True)
class CalibrationSet:
    calibration: list[Path]
    held_out: list[Path]

    def sha256(self) -> str:
        """Identifies the calibration images by content (not by name): the sha256 over their sha256s in
        the order they were used, so the same photos under other names give the same value."""
        digest = hashlib.sha256()
        for path in self.calibration:
            digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
        return digest.hexdigest()


def split_folder(folder: Path, count: int | None) -> CalibrationSet:
    """Image files under `folder` (recursively, path order): every fifth held out, up to `count` of
    the rest for calibration."""
    if not folder.is_dir():
        raise CalibrationError(f"--calibration {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    held = [p for i, p in enumerate(files) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    rest = [p for i, p in enumerate(files) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    calibration = rest[:count] if count else rest
    if len(calibration) < MIN_CALIBRATION or len(held) < MIN_HELD_OUT:
        raise CalibrationError(
            f"--calibration {folder}: {len(files)} images give {len(calibration)} to calibrate and "
            f"{len(held)} held out for the quality gate (every {HOLDOUT_EVERY}th); need at least "
            f"{MIN_CALIBRATION} and {MIN_HELD_OUT}: add images"
        )
    return CalibrationSet(calibration, held)


def load_pixels(paths: list[Path], manifest: Manifest) -> np.ndarray:
    """uint8 [N, S, S, 3] of the files, decoded and cropped by the service's own code."""
    own_pixel_limit()
    out = np.empty((len(paths), manifest.input_size, manifest.input_size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path.read_bytes(), manifest, MAX_PIXELS)
        except (ImageError, OSError) as exc:
            raise CalibrationError(f"calibration image {path}: {exc}") from None
    return out


class ImageReader(CalibrationDataReader):
    """Feeds the quantizer batches of prepared pixels, decoding one batch at a time."""

    def __init__(self, paths: list[Path], manifest: Manifest, input_name: str = "images") -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: load_pixels(paths[i : i + BATCH], manifest)} for i in range(0, len(paths), BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
