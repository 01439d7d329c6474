"""Bytes → pixels: decode one image and prepare it as timm's eval transform does.

Runs in the decode thread pool, never on the event loop. Every failure is an `ImageError` with a
message fit for the client; the pixel limit is checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simpool_serve.service.engine.errors import Kind
from simpool_serve.service.engine.jpeg import count_scans
from simpool_serve.service.engine.split_resize import resize_crop
from simpool_serve.spec import IMAGE_FORMATS, Manifest

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_ORIENTATION_TAG = 0x0112
# EXIF orientation → the transpose that shows the image upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)
# JPEG draft decoding (DCT scaling) is used only while the decoded image keeps this many times the
# resize target on its shorter side, so that the final antialiased resize still dominates the result.
DRAFT_MARGIN = 2
# Past this many pixels (48 MiB of RGB), the resized image is not built whole (see `prepare`).
MAX_RESIZED_PIXELS = 2**24
# Encoders write at most about 10 scans per JPEG (progressive ones); each scan costs a pass over every
# block of the image (2.7 ms at 49 MP), so a file with more than this is refused as a decompression bomb.
MAX_JPEG_SCANS = 100


class ImageError(ValueError):
    """An image the service cannot use; `kind` is the failure it earns (bad image, or too large)."""

    kind = Kind.BAD_IMAGE
    reason = "bad_image"  # the failure metric's label


class ImageTooLarge(ImageError):
    kind = Kind.TOO_LARGE
    reason = "image_too_large"


@dataclass(frozen=True)
class Geometry:
    """Where the model's centre crop lies in the upright original image (pixels, floats)."""

    width: int
    height: int
    crop: tuple[float, float, float, float]  # left, top, right, bottom


def own_pixel_limit() -> None:
    """Turns off Pillow's process-wide decompression-bomb guard, which `open_image` replaces.

    Pillow refuses images over 2 × `Image.MAX_IMAGE_PIXELS` (about 179 M by default) inside
    `Image.open`, so a `SIMPOOL_MAX_IMAGE_PIXELS` above that could never take effect. Our limit is
    checked from the same header, right after `Image.open` and before any pixel is decoded. Called by
    the service's lifespan, never at import.
    """
    Image.MAX_IMAGE_PIXELS = None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identifies the image from its header and checks its size; no pixel is decoded yet."""
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels ({exc})") from exc
    except Exception as exc:
        raise ImageError("not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}×{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(SIMPOOL_MAX_IMAGE_PIXELS)"
        )
    if width < 1 or height < 1:
        raise ImageError("image is empty")
    # Progressive files are the known case; a sequential file may repeat scans as well. Counting costs
    # ~1 ms for a 3.5 MB JPEG, against 120-300 ms to decode it.
    if img.format in ("JPEG", "MPO") and count_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise ImageError(
            f"JPEG with over {MAX_JPEG_SCANS} scans (encoders write at most about 10): "
            "refused as a decompression bomb"
        )
    return img


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's `Resize(int)`: the shorter side becomes `shorter`, the longer one is truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's `CenterCrop` offsets (left, top), Python rounding included."""
    return round((width - size) / 2.0), round((height - size) / 2.0)


def geometry(width: int, height: int, manifest: Manifest) -> Geometry:
    """Maps the centre crop back onto the upright original, for drawing the attention over it."""
    rw, rh = resized_size(width, height, manifest.resize)
    left, top = crop_offsets(rw, rh, manifest.input_size)
    sx, sy = width / rw, height / rh
    s = manifest.input_size
    return Geometry(width, height, (left * sx, top * sy, (left + s) * sx, (top + s) * sy))


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block is not worth refusing the image for
        return 1


def _transpose_box(
    box: tuple[float, float, float, float], size: tuple[int, int], method: Image.Transpose
) -> tuple[float, float, float, float]:
    """The same region after `img.transpose(method)` of an image of `size` (before the transpose)."""
    w, h = size
    maps = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda x, y: (w - x, y),
        Image.Transpose.ROTATE_180: lambda x, y: (w - x, h - y),
        Image.Transpose.FLIP_TOP_BOTTOM: lambda x, y: (x, h - y),
        Image.Transpose.TRANSPOSE: lambda x, y: (y, x),
        Image.Transpose.ROTATE_270: lambda x, y: (h - y, x),
        Image.Transpose.TRANSVERSE: lambda x, y: (h - y, w - x),
        Image.Transpose.ROTATE_90: lambda x, y: (y, w - x),
    }
    (x0, y0), (x1, y1) = maps[method](box[0], box[1]), maps[method](box[2], box[3])
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode → 8-bit RGB. Deep images are scaled from their format's full range, not clipped (Pillow's
    own conversion clips 16-bit values at 255): 16- and 32-bit integers from 0–65535 (÷257, as PNG
    defines 16-bit samples), floats from 0–1. The scale never depends on the pixels themselves, so one
    bright pixel cannot change how the rest of the image looks."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        arr *= 255.0 if img.mode == "F" else 255.0 / 65535.0
        img = Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def upright_size(img: Image.Image) -> tuple[int, int]:
    """The (width, height) the opened image will have once its EXIF orientation is applied."""
    w, h = img.size
    return (h, w) if _TRANSPOSE.get(_orientation(img)) in _SWAPS_AXES else (w, h)


def load(data: bytes, max_pixels: int, draft_short: int | None) -> tuple[Image.Image, tuple[int, int], tuple]:
    """Decodes upright RGB pixels; returns (image, upright original size, region of the image covering it).

    With `draft_short`, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its shorter side stays
    at least `draft_short`; the region then says which (fractional) part of the small image is the original.
    """
    img = open_image(data, max_pixels)
    want = (draft_short, draft_short) if draft_short and min(img.size) >= 2 * draft_short else None
    return load_opened(img, want)


def load_opened(
    img: Image.Image, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int], tuple]:
    """`load` for an image `open_image` returned: with `draft_size` (stored orientation), a JPEG is
    decoded at the coarsest DCT scale (1/2, 1/4, 1/8) that keeps at least that many pixels a side."""
    try:
        orig_w, orig_h = img.size
        box: tuple[float, float, float, float] = (0.0, 0.0, float(orig_w), float(orig_h))
        if draft_size and img.format in ("JPEG", "MPO"):
            drafted = img.draft(img.mode, draft_size)
            if drafted is not None:
                box = tuple(float(v) for v in drafted[1])  # type: ignore[assignment]
        img.load()
        method = _TRANSPOSE.get(_orientation(img))
        if method is not None:
            box = _transpose_box(box, img.size, method)
            img = img.transpose(method)
            if method in _SWAPS_AXES:
                orig_w, orig_h = orig_h, orig_w
        return _to_rgb(img), (orig_w, orig_h), box
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def load_original(data: bytes, max_pixels: int) -> Image.Image:
    """The upright RGB image at its original size (for drawing the attention over it)."""
    img, _, _ = load(data, max_pixels, None)
    return img


def prepare(
    img: Image.Image, size: tuple[int, int], box: tuple, manifest: Manifest, helper: Executor | None = None
) -> np.ndarray:
    """Resize the shorter side of the (upright) original to `manifest.resize`, centre-crop to S×S.

    `box` is the region of `img` that holds the original of `size` (all of it, unless JPEG draft
    decoding shrank it). The whole image is resized, then cropped, exactly as torchvision does.
    Resizing only the crop's box would be faster, but Pillow takes a box in float32 coordinates, which
    moves the filter's taps (pixels differ by up to 7 levels); and running the two passes as two calls
    with the crop's columns cut in between is exact only in the pass order Pillow happens to choose
    (not always horizontal first). Only a very elongated image (over `MAX_RESIZED_PIXELS` once resized)
    has just its crop's band resized. With a `helper` thread, the resize and crop are shared with it,
    with the same pixels (`split_resize`).
    """
    s = manifest.input_size
    resample = _RESAMPLE[manifest.interpolation]
    rw, rh = resized_size(size[0], size[1], manifest.resize)
    left, top = crop_offsets(rw, rh, s)
    if rw * rh > MAX_RESIZED_PIXELS:
        # A very elongated image (a 1×60000 PNG is 100 bytes) would resize to gigabytes: resize only the
        # band of the long side that the crop covers (the same filter taps; the short side as usual).
        x0, y0, x1, y1 = (float(v) for v in box)
        if rh >= rw:
            fy = (y1 - y0) / rh
            band = (x0, y0 + top * fy, x1, y0 + (top + s) * fy)
            img, rh, top = img.resize((rw, s), resample, box=band), s, 0
        else:
            fx = (x1 - x0) / rw
            band = (x0 + left * fx, y0, x0 + (left + s) * fx, y1)
            img, rw, left = img.resize((s, rh), resample, box=band), s, 0
    else:
        full = box == (0.0, 0.0, float(img.width), float(img.height))
        if (rw, rh) != img.size or not full:
            if helper is not None and left >= 0 and top >= 0:
                return resize_crop(img, (rw, rh), box, (left, top, s), resample, helper)
            img = img.resize((rw, rh), resample, box=None if full else box)
    if left < 0 or top < 0:  # smaller than the crop on a side: torchvision pads with zeros
        pad_x, pad_y = max(0, s - rw), max(0, s - rh)
        canvas = Image.new("RGB", (rw + pad_x, rh + pad_y))
        canvas.paste(img, (pad_x // 2, pad_y // 2))
        img = canvas
        left, top = crop_offsets(canvas.width, canvas.height, s)
    return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


def decode(
    data: bytes, manifest: Manifest, max_pixels: int, draft: bool = True, helper: Executor | None = None
) -> tuple[np.ndarray, Geometry]:
    """Encoded image bytes → (uint8 [S, S, 3] RGB, resized and centre-cropped as the manifest says; where
    that crop lies on the upright original, for mapping the attention back onto the photograph). With a
    `helper` thread, the resize is shared with it (`prepare`)."""
    draft_short = DRAFT_MARGIN * manifest.resize if draft else None
    img, size, box = load(data, max_pixels, draft_short)
    try:
        return prepare(img, size, box, manifest, helper), geometry(size[0], size[1], manifest)
    except Exception as exc:
        raise ImageError(f"cannot prepare image ({type(exc).__name__}: {exc})") from exc


def decode_image(data: bytes, manifest: Manifest, max_pixels: int, draft: bool = True) -> np.ndarray:
    """Encoded image bytes → uint8 [S, S, 3], RGB, resized and centre-cropped as the manifest says."""
    return decode(data, manifest, max_pixels, draft)[0]
