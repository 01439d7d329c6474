"""Pillow's resize and centre crop on two threads, pixel for pixel the same as one `Image.resize` call.

A lone request has the whole CPU to itself, and its resize is the largest part of its decode (2-3 ms of
a 500×375 JPEG's 4-5 ms here); Pillow runs it on one core. Pillow resizes in two separable passes, one
per axis, each rounding to 8 bits, and chooses their order from the sizes (`vertical_first`). Each
pass's filter taps depend only on the axis it resamples (the image's length along it, the box and the
output length), never on the other axis. So the first pass can run on two bands cut across the axis
it resamples, and the second on two bands cut across the other, each band one `resize` call with the
same box along its axis: the same taps, the same 8-bit rounding, the same pixels. Only the bands the
centre crop needs are resampled.

A band handed to the helper thread that has not started when the caller finishes its own is taken
back and run by the caller: a busy (or single-thread) pool costs the split nothing but a queue entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor, Future

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]
# Half-widths of the filters' support, in input pixels at scale 1 (Pillow's filter table).
_SUPPORT = {Image.Resampling.BILINEAR: 1.0, Image.Resampling.BICUBIC: 2.0}


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Pillow 13.0's pass order: the vertical pass first when the height shrinks by more than twice
    as many pixels as the width does."""
    shrink_y = in_size[1] - out_size[1]
    return shrink_y > 0 and shrink_y > (in_size[0] - out_size[0]) * 2


def _span(
    lo: float, hi: float, length: int, out: int, first: int, last: int, support: float
) -> tuple[int, int]:
    """The input pixels along one axis (a superset, clipped to the image) that outputs [first, last)
    read, for a resample of input span [lo, hi] of `length` pixels onto `out`."""
    scale = (hi - lo) / out
    reach = support * max(scale, 1.0)
    start = math.floor(lo + first * scale - reach) - 1
    end = math.ceil(lo + last * scale + reach) + 2
    return max(0, start), min(length, end)


def _halves(a: int, b: int) -> tuple[tuple[int, int], tuple[int, int]]:
    mid = (a + b) // 2
    return (a, mid), (mid, b)


def _both(
    helper: Executor, work: Callable[[int, int], Image.Image], span: tuple[int, int]
) -> list[Image.Image]:
    """`work` over the two halves of `span`: the second on `helper`, unless it has not started by the
    time the first is done (or the pool is shutting down)."""
    mine, theirs = _halves(*span)
    try:
        pending: Future[Image.Image] | None = helper.submit(work, *theirs)
    except RuntimeError:  # shut down
        pending = None
    first = work(*mine)
    if pending is None or pending.cancel():
        return [first, work(*theirs)]
    return [first, pending.result()]


def resize_crop(
    img: Image.Image,
    size: tuple[int, int],
    box: Box,
    crop: tuple[int, int, int],
    resample: Image.Resampling,
    helper: Executor,
) -> np.ndarray:
    """`np.asarray(img.resize(size, resample, box).crop((left, top, left + s, top + s)))` for
    `crop = (left, top, s)` inside the resized image, computed on this thread and `helper`."""
    (width, height), (out_w, out_h), (left, top, s) = img.size, size, crop
    x0, y0, x1, y1 = box
    support = _SUPPORT.get(resample, 3.0)

    def across(src: Image.Image, a: int, b: int) -> Image.Image:
        """The horizontal pass over rows [a, b) of `src`."""
        return src.crop((0, a, src.width, b)).resize((out_w, b - a), resample, (x0, 0, x1, b - a))

    def down(src: Image.Image, a: int, b: int) -> Image.Image:
        """The vertical pass over columns [a, b) of `src`."""
        return src.crop((a, 0, b, src.height)).resize((b - a, out_h), resample, (0, y0, b - a, y1))

    if vertical_first(img.size, size):
        # The vertical pass over the columns that the crop's columns read, into an image of the
        # intermediate size (the rest left black, never read); then the horizontal one over the crop's rows.
        cols = _span(x0, x1, width, out_w, left, left + s, support)
        temp = Image.new(img.mode, (width, out_h))
        for (a, _), band in zip(
            _halves(*cols), _both(helper, lambda a, b: down(img, a, b), cols), strict=True
        ):
            temp.paste(band, (a, 0))
        rows = _both(helper, lambda a, b: across(temp, a, b).crop((left, 0, left + s, b - a)), (top, top + s))
        return np.concatenate([np.asarray(r, dtype=np.uint8) for r in rows], axis=0)
    # The horizontal pass over the rows that the crop's rows read; then the vertical one over its columns.
    span = _span(y0, y1, height, out_h, top, top + s, support)
    temp = Image.new(img.mode, (out_w, height))
    for (a, _), band in zip(_halves(*span), _both(helper, lambda a, b: across(img, a, b), span), strict=True):
        temp.paste(band, (0, a))
    cols = _both(helper, lambda a, b: down(temp, a, b).crop((0, top, b - a, top + s)), (left, left + s))
    return np.concatenate([np.asarray(c, dtype=np.uint8) for c in cols], axis=1)


def agrees(helper: Executor) -> bool:
    """Whether `resize_crop` gives this Pillow's pixels, on shapes either side of its pass order's rule
    (the rule is Pillow 13.0's: another version may order the passes otherwise)."""
    rng = np.random.default_rng(0)
    cases = (  # (source size, box inset, resized size, crop (left, top, side))
        ((120, 90), 0.0, (64, 48), (8, 0, 48)),  # landscape: horizontal first
        ((90, 200), 0.0, (48, 106), (0, 29, 48)),  # portrait: vertical first
        ((100, 130), 0.0, (60, 78), (6, 15, 48)),  # height shrinks < 2× the width's pixels: horizontal first
        ((100, 160), 0.0, (70, 80), (11, 16, 48)),  # more than 2×: vertical first
        ((40, 30), 0.0, (64, 48), (8, 0, 48)),  # enlarged
        ((130, 170), 1.7, (48, 62), (0, 7, 48)),  # a fractional box, as after JPEG draft decoding
    )
    for (w, h), inset, size, (left, top, s) in cases:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        box = (inset, inset / 2, w - inset, h - inset / 3)
        for resample in _SUPPORT:
            one = img.resize(size, resample, box).crop((left, top, left + s, top + s))
            if not np.array_equal(
                np.asarray(one), resize_crop(img, size, box, (left, top, s), resample, helper)
            ):
                return False
    return True
