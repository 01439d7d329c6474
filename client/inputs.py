"""Turns what users hold (paths, bytes, PIL images, numpy arrays) into the bytes the service decodes.

Files and bytes travel untouched, so the service sees exactly what a browser upload
would send; in-memory pixels are encoded as PNG because a lossy encoding would make
the same array give a different embedding here than in-process.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any, TypeAlias

import numpy as np

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Any"


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _array_to_png(array: np.ndarray) -> bytes:
    from PIL import Image

    if array.dtype != np.uint8:
        raise TypeError(
            f"numpy images must be uint8 (got {array.dtype}); scale to 0..255 and cast before sending"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"numpy images must be HxW, HxWx3 (RGB) or HxWx4 (RGBA); got shape {array.shape}")
    return _png(Image.fromarray(np.ascontiguousarray(array)))


def to_bytes(image: ImageInput) -> bytes:
    """Encoded image bytes for one input; raises TypeError for anything that is not an image."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as fh:
            return fh.read()
    if isinstance(image, np.ndarray):
        return _array_to_png(image)
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL.Image.Image, without importing PIL eagerly
        return _png(image)
    raise TypeError(f"cannot send {type(image).__name__} as an image: use a path, bytes, PIL image or array")


def size_hint(image: ImageInput) -> int:
    """Bytes this input will take once encoded, without reading or encoding it (an upper bound for
    in-memory pixels, whose PNG is rarely larger than the raw pixels)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return len(image)
    if isinstance(image, str | os.PathLike):
        try:
            return os.path.getsize(image)
        except OSError:
            return 0  # the error surfaces, with its path, when the request is built
    if isinstance(image, np.ndarray):
        return int(image.nbytes)
    if hasattr(image, "size") and hasattr(image, "mode"):
        width, height = image.size
        return int(width * height * 4)
    return 0


def to_base64(image: ImageInput) -> str:
    return base64.b64encode(to_bytes(image)).decode("ascii")
