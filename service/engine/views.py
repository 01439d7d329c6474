"""Bytes → the `full` view: the whole upright photograph at its own aspect ratio, as retrieval sees it.

The paper's retrieval code (DINO's protocol) opens each image, converts it to RGB and shrinks it with
`Image.thumbnail((size, size), LANCZOS)` on the fully decoded pixels; a revisited Oxford/Paris query is
first cut to its box with `Image.crop`. This module gives exactly those pixels (EXIF orientation
applied, the service's byte and pixel limits kept) and where they lie on the original, for mapping an
attention map back onto the photograph. A large JPEG may be decoded at 1/2, 1/4 or 1/8 scale (JPEG
draft) only while that keeps `DRAFT_MARGIN` times the view's pixels on each side, which keeps the
pixels within cosine 0.9999 of the fully decoded path (tests/test_views.py measures it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simpool_serve.service.engine.errors import Kind
from simpool_serve.service.engine.preprocess import (
    Geometry,
    ImageError,
    load_opened,
    open_image,
    upright_size,
)

# Pillow's own `thumbnail` drafts to 2× its target; the view drafts only while the decoded image keeps
# this many times the view's size on each side, so that LANCZOS still does nearly all the shrinking.
DRAFT_MARGIN = 4
# `Image.thumbnail`'s default: reduce by an integer factor first while 2× the target is left.
REDUCING_GAP = 2.0
# The smallest shorter side a scale may leave: one stride-32 cell for a CNN, one 16-pixel patch for a ViT.
MIN_SIDE_CNN = 32
MIN_SIDE_VIT = 16

Box = tuple[int, int, int, int]


class RegionError(ImageError):
    """A `region` box that does not cut a non-empty part out of the image (422, naming the image)."""

    kind = Kind.INVALID
    reason = "bad_region"


class ViewTooSmall(ImageError):
    """A view that some scale shrinks below one feature cell (400, naming the image)."""

    reason = "image_too_small"


@dataclass(frozen=True)
class FullView:
    """The model's pixels and where they lie on the upright original (`geometry.crop`: the region)."""

    pixels: np.ndarray  # uint8 [H, W, 3], RGB
    geometry: Geometry
    drafted: bool  # decoded from a JPEG at reduced scale


def thumbnail_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size `Image.thumbnail((size, size))` gives a `width`×`height` image (never larger).

    Pillow picks, of the floor and the ceiling of the exact short side, the one whose aspect ratio is
    closer to the original's (at least 1 pixel); computed here so that a drafted decode can be resized to
    the very size the fully decoded image would get. Guarded against Pillow by tests/test_views.py.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    if width <= size and height <= size:
        return width, height
    aspect = width / height
    if aspect <= 1:  # the height is the bound (Pillow: size / size >= aspect)
        candidates = (math.floor(size * aspect), math.ceil(size * aspect))
        w = max(min(candidates, key=lambda n: abs(aspect - n / size)), 1)
        return w, size
    candidates = (math.floor(size / aspect), math.ceil(size / aspect))
    h = max(min(candidates, key=lambda n: 0 if n == 0 else abs(aspect - size / n)), 1)
    return size, h


def crop_box(region: Sequence[float], width: int, height: int) -> Box:
    """`region` rounded as `Image.crop` rounds it, checked to cut a non-empty part inside the image."""
    try:
        values = [float(v) for v in region]
    except (TypeError, ValueError) as exc:
        raise RegionError(f"region must be four numbers [x0, y0, x1, y1], not {region!r}") from exc
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise RegionError(f"region must be four finite numbers [x0, y0, x1, y1], not {region!r}")
    x0, y0, x1, y1 = (round(v) for v in values)  # what Image.crop does with a float box
    if x1 <= x0 or y1 <= y0:
        raise RegionError(f"region {values} is empty once rounded to pixels (need x1 > x0 and y1 > y0)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise RegionError(f"region {values} is outside the {width}×{height} image")
    return x0, y0, x1, y1


def draft_request(
    upright: tuple[int, int], stored: tuple[int, int], cut: Box, size: int
) -> tuple[int, int] | None:
    """The size to ask JPEG draft for (stored orientation), or None where drafting would not pay.

    Pillow drafts to the coarsest scale s with W // w ≥ s and H // h ≥ s for a request (w, h); asking
    for the image scaled by `DRAFT_MARGIN` × view / region keeps at least that margin inside the region.
    """
    w, h = upright
    cw, ch = cut[2] - cut[0], cut[3] - cut[1]
    tw, th = thumbnail_size(cw, ch, size)
    want_w, want_h = math.ceil(w * DRAFT_MARGIN * tw / cw), math.ceil(h * DRAFT_MARGIN * th / ch)
    if min(w // want_w, h // want_h) < 2:
        return None
    # Turned by EXIF: ask in the stored orientation (a square image needs no turn: min() is symmetric).
    return (want_w, want_h) if stored == upright else (want_h, want_w)


def render(img: Image.Image, original: tuple[int, int], box: tuple, size: int, cut: Box) -> FullView:
    """The view of an upright decoded image: `cut` (original pixels) shrunk as `thumbnail` shrinks it.

    `box` is the part of `img` that holds the original of size `original` (all of it unless drafted),
    as `preprocess.load` returns it. `img` is left as it is, so one decode can give several views.
    """
    w, h = original
    cw, ch = cut[2] - cut[0], cut[3] - cut[1]
    target = thumbnail_size(cw, ch, size)
    drafted = img.size != original
    if not drafted:
        part = img if cut == (0, 0, w, h) else img.crop(cut)
        # What thumbnail() does to a decoded image (its draft step is a no-op then), without changing it.
        out = (
            part
            if target == part.size
            else part.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        )
    else:
        fx, fy = (box[2] - box[0]) / w, (box[3] - box[1]) / h
        src = (box[0] + cut[0] * fx, box[1] + cut[1] * fy, box[0] + cut[2] * fx, box[1] + cut[3] * fy)
        out = img.resize(target, Image.Resampling.LANCZOS, box=src, reducing_gap=REDUCING_GAP)
    geometry = Geometry(w, h, (float(cut[0]), float(cut[1]), float(cut[2]), float(cut[3])))
    return FullView(np.asarray(out, dtype=np.uint8), geometry, drafted)


def full_view(
    data: bytes, size: int, max_pixels: int, region: Sequence[float] | None = None, draft: bool = True
) -> FullView:
    """Encoded bytes (already through `decode.payload_bytes`) → the `full` view of longer side ≤ `size`.

    The pixel limit is checked from the header before decoding; an invalid `region` is a `RegionError`
    (422), anything undecodable an `ImageError` (400), too many pixels `ImageTooLarge` (413).
    """
    img = open_image(data, max_pixels)
    upright = upright_size(img)
    cut = (0, 0, *upright) if region is None else crop_box(region, *upright)
    want = draft_request(upright, img.size, cut, size) if draft and img.format in ("JPEG", "MPO") else None
    decoded, original, box = load_opened(img, want)
    try:
        return render(decoded, original, box, size, cut)
    except Exception as exc:
        raise ImageError(f"cannot prepare image ({type(exc).__name__}: {exc})") from exc


def covered_geometry(view: FullView, covered: tuple[int, int]) -> Geometry:
    """The part of the original that the first `covered` (width, height) pixels of the view show.

    A ViT's token grid covers floor(W / 16) × 16 columns and drops the rest, so its attention cells map
    onto this part, not onto the whole view.
    """
    height, width = view.pixels.shape[:2]
    x0, y0, x1, y1 = view.geometry.crop
    part = (x0, y0, x0 + (x1 - x0) * covered[0] / width, y0 + (y1 - y0) * covered[1] / height)
    return Geometry(view.geometry.width, view.geometry.height, part)


# The paper's multi_scale runs at 1, 1/√2 and 1/2. A request's scales are identified to four decimals
# (fingerprints, whitening fits), so 0.7071 stands for 1/√2 and is computed as it: PyTorch sizes a
# 338-row side at 1/√2 as 239 rows, at 0.7071 as 238.
_EXACT = {0.7071: 2**-0.5}


def exact_scale(scale: float) -> float:
    """The scale computed for a requested one: 1/√2 for 0.7071 (to four decimals), else itself."""
    return _EXACT.get(round(float(scale), 4), float(scale))


def scaled_side(side: int, scale: float) -> int:
    """A side after bilinear rescaling by `scale`, as the paper's `F.interpolate(scale_factor=s)` sizes
    it: floor(side · s) in float64 (PyTorch's `compute_output_size`), e.g. 62 for 90 × 0.7."""
    return math.floor(float(side) * exact_scale(scale))


def graph_side(side: int, scale: np.float32) -> int:
    """The side onnxruntime's `Resize` gives for a float32 scale: the float32 product, truncated
    (63 for 90 × float32(0.7), where PyTorch's float64 floor gives 62)."""
    return int(np.float32(side) * np.float32(scale))


def graph_scale(shape: Sequence[int], scale: float) -> np.float32:
    """The float32 scale to feed the graph so that its `Resize` gives `shape` (H, W) the sides that
    `scaled_side` (PyTorch, float64) gives.

    float32(s) times a side can round up onto the next integer where the float64 product lies just
    below it; a neighbour a few ulps away (moving the sampling positions by under 1e-6 of a pixel)
    then gives PyTorch's side. H and W share one scale in the graph: where no float32 gives both (one
    product an exact integer, the other a hair below one), float32(s) is fed as it is.
    """
    want = [scaled_side(side, scale) for side in shape]
    base = np.float32(exact_scale(scale))
    up = down = base
    candidates = [base]
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        candidates += [down, up]
    for candidate in candidates:
        if [graph_side(side, candidate) for side in shape] == want:
            return candidate
    return base


def min_side(input_size: int, grid: tuple[int, int]) -> int:
    """The smallest shorter side a model takes: 16 (one patch) for a ViT, 32 for a CNN (by its stride)."""
    return MIN_SIDE_VIT if input_size // grid[0] <= MIN_SIDE_VIT else MIN_SIDE_CNN


def check_scales(shape: tuple[int, int], scales: Sequence[float], smallest: int) -> None:
    """Refuses (`ViewTooSmall`, 400) a view of `shape` (height, width) that a scale shrinks below
    `smallest` pixels on its shorter side; the engine adds the image's index."""
    shorter = min(shape)
    for scale in scales:
        side = scaled_side(shorter, scale)
        if side < smallest:
            raise ViewTooSmall(
                f"image is {shape[1]}×{shape[0]} in this view; at scale {scale:g} its shorter side is "
                f"{side} px, under the model's minimum of {smallest}"
            )
