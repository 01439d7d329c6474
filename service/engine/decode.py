"""Bytes → pixels, as the decode pool runs it: payload limits, then decoding and preprocessing.

An image arrives as raw bytes (multipart, the binary tensor extension) or as base64 text (JSON: plain,
or a data URI); both end as uint8 [S, S, 3] for the model, or as an `ImageError` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import pybase64
from PIL import Image

from simpool_serve.service.engine import views
from simpool_serve.service.engine.descriptor import Resolved
from simpool_serve.service.engine.limits import Limits, image_bytes_message
from simpool_serve.service.engine.preprocess import (
    Geometry,
    ImageError,
    ImageTooLarge,
    decode,
    geometry,
    load_original,
    prepare,
)
from simpool_serve.service.metrics import Metrics
from simpool_serve.spec import Manifest

Payload = bytes | str  # an encoded image: its bytes, or base64 text (plain or a data URI)

_SPACES = " \t\r\n"
_WHITESPACE = str.maketrans("", "", _SPACES)


def payload_bytes(payload: Payload, max_bytes: int) -> bytes:
    """The encoded image: raw bytes as sent, or base64 text (plain or a data URI) decoded."""
    if isinstance(payload, bytes):
        if len(payload) > max_bytes:
            raise ImageTooLarge(image_bytes_message(len(payload), max_bytes))
        return payload
    text = payload
    if text[:5].lower() == "data:":  # RFC 2397: the scheme and ";base64" are case-insensitive
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ImageError("data URI is not base64 (expected data:image/...;base64,...)")
    elif text.lstrip()[:8].lower().startswith(("http://", "https://", "file://")):  # ':' is never base64
        raise ImageError("URLs are not fetched; send the image bytes (base64, a data URI or a file part)")
    if any(c in text for c in _SPACES):  # line-wrapped base64 (MIME, `base64` tool) is accepted
        text = text.translate(_WHITESPACE)  # (only then: 40 µs for a 500×375 JPEG's base64, the look 4 µs)
    if len(text) // 4 * 3 > max_bytes + 3:  # refused before decoding; exact below
        raise ImageTooLarge(image_bytes_message(len(text) // 4 * 3, max_bytes, about=True))
    try:  # SIMD: 5 µs for a 500×375 JPEG's base64, against the standard library's 210 µs
        data = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # what the standard library accepts besides (padding after a whole quantum) stays accepted
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"invalid base64 ({exc})") from exc
    if len(data) > max_bytes:
        raise ImageTooLarge(image_bytes_message(len(data), max_bytes))
    return data


@dataclass(frozen=True, slots=True)
class Decoder:
    """The decode stage with the service's limits; its methods run in the decode pool."""

    limits: Limits
    jpeg_draft: bool
    metrics: Metrics

    def pixels(
        self, payload: Payload, manifest: Manifest, model: str, helper: Executor | None = None
    ) -> tuple[np.ndarray, Geometry]:
        """The model's pixels, and where their crop lies on the upright original (for boxes); with a
        `helper` thread to share the resize with (a lone image, when the CPU is otherwise idle)."""
        start = time.perf_counter()
        data = payload_bytes(payload, self.limits.max_image_bytes)
        out = decode(data, manifest, self.limits.max_image_pixels, draft=self.jpeg_draft, helper=helper)
        self.metrics.stage_duration.labels(model, "decode").observe(time.perf_counter() - start)
        return out

    def view(
        self,
        payload: Payload,
        manifest: Manifest,
        model: str,
        resolved: Resolved,
        region: tuple[float, float, float, float] | None = None,
    ) -> tuple[np.ndarray, Geometry]:
        """The pixels of the request's view (crop or full, cut to its box), checked against its scales:
        a scale that leaves less than the model's smallest side is a `ViewTooSmall` (400)."""
        if resolved.view == "crop":
            pixels, geometry = self.pixels(payload, manifest, model)
        else:
            start = time.perf_counter()
            data = payload_bytes(payload, self.limits.max_image_bytes)
            full = views.full_view(
                data,
                resolved.size,
                self.limits.max_image_pixels,
                region or resolved.box,
                draft=self.jpeg_draft,
            )
            pixels, geometry = full.pixels, full.geometry
            height, width = pixels.shape[:2]
            if views.min_side(manifest.input_size, manifest.grid) == views.MIN_SIDE_VIT:
                # The token grid covers floor(W/16) × floor(H/16) patches: boxes map onto that part.
                patch = views.MIN_SIDE_VIT
                geometry = views.covered_geometry(full, (width // patch * patch, height // patch * patch))
            self.metrics.stage_duration.labels(model, "decode").observe(time.perf_counter() - start)
        if resolved.scales != (1.0,) or resolved.view == "full":
            smallest = views.min_side(manifest.input_size, manifest.grid)
            views.check_scales(pixels.shape[:2], resolved.scales, smallest)
        return pixels, geometry

    def with_original(
        self, payload: Payload, manifest: Manifest, model: str
    ) -> tuple[np.ndarray, Image.Image, Geometry]:
        """For an overlay: the pixels, and the upright original they were cut from (no draft decoding)."""
        start = time.perf_counter()
        data = payload_bytes(payload, self.limits.max_image_bytes)
        original = load_original(data, self.limits.max_image_pixels)
        width, height = original.size
        pixels = prepare(original, original.size, (0.0, 0.0, float(width), float(height)), manifest)
        self.metrics.stage_duration.labels(model, "decode").observe(time.perf_counter() - start)
        return pixels, original, geometry(width, height, manifest)
