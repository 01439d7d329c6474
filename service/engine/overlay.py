"""Attention → picture: the heat map drawn over the part of the original photograph the model saw."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from simpool_serve.service.engine.preprocess import Geometry


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """A blue→cyan→yellow→red ramp for values in [0, 1]; uint8 RGB."""
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float64)
    rgb = np.stack([np.interp(values, stops, colours[:, c]) for c in range(3)], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


_HEAT_LUT = _heat_colours(np.arange(256) / 255.0)  # the heat map is 8-bit: a colour per level
_BAND_ROWS = 512  # rows blended at a time: 2 × 43 MB of float32 for a 7000-pixel-wide crop


def attention_png(original: Image.Image, geo: Geometry, attention: np.ndarray, alpha: float = 0.5) -> bytes:
    """The attention as a heat map over the part of the original the model saw (its centre crop).

    The map is upsampled (bilinear) onto the crop region at the original resolution; outside the crop,
    where the model saw nothing, the photograph is dimmed.
    """
    att = np.asarray(attention, dtype=np.float64)
    span = att.max() - att.min()
    norm = (att - att.min()) / span if span > 0 else np.zeros_like(att)
    left, top, right, bottom = geo.crop
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(geo.width, round(right)), min(geo.height, round(bottom))
    # The crop may extend past the image (tiny images are padded): upsample over the whole crop, then clip.
    full_w, full_h = max(1, round(right - left)), max(1, round(bottom - top))
    heat = Image.fromarray((norm * 255).astype(np.uint8)).resize((full_w, full_h), Image.Resampling.BILINEAR)
    heat = heat.crop((x0 - round(left), y0 - round(top), x1 - round(left), y1 - round(top)))
    # In uint8, with float32 only over a band of rows at a time: float64 copies of a 50-megapixel
    # photograph took ~30x its size (4.5 GB for one request); whole-crop float32 still took 1.2 GB.
    base = np.asarray(original.convert("RGB"))
    canvas = np.empty_like(base)
    np.multiply(base, 0.4, out=canvas, casting="unsafe")  # truncates, as astype(np.uint8) did
    levels = np.asarray(heat, dtype=np.uint8)
    for r0 in range(0, y1 - y0, _BAND_ROWS):
        r1 = min(y1 - y0, r0 + _BAND_ROWS)
        region = base[y0 + r0 : y0 + r1, x0:x1].astype(np.float32)
        region *= 1 - alpha
        colours = _HEAT_LUT[levels[r0:r1]].astype(np.float32)
        colours *= alpha
        region += colours
        canvas[y0 + r0 : y0 + r1, x0:x1] = np.clip(region, 0, 255, out=region)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "PNG", compress_level=3)
    return buf.getvalue()
