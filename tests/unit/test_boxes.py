"""Boxes from the attention: hand-computed maps, real photographs (non-square, EXIF-rotated)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from simpool_serve.service.engine.boxes import attention_box, components, grid_box, top_mass_mask
from simpool_serve.service.engine.preprocess import decode, load_original
from simpool_serve.spec import Manifest

# Sums to 1. Sorted: 0.25 (2,2), 0.20 (1,1), 0.20 (3,4), 0.15 (1,2), 0.10 (0,4), 0.05, 0.03, 0.02.
HAND = np.array(
    [
        [0.00, 0.02, 0.00, 0.00, 0.10],
        [0.00, 0.20, 0.15, 0.00, 0.00],
        [0.00, 0.05, 0.25, 0.00, 0.00],
        [0.00, 0.00, 0.00, 0.03, 0.20],
    ]
)

MANIFEST = Manifest.model_validate(
    {
        "name": "m",
        "arch": "resnet18",
        "embedding_dim": 4,
        "num_classes": 0,
        "input_size": 224,
        "grid": [7, 7],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize": 256,
        "interpolation": "bicubic",
        "onnx_sha256": "ab" * 32,
    }
)


def jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def coffee() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee())  # 600 wide, 400 high


def sideways(img: Image.Image) -> bytes:
    """The photograph stored rotated, with EXIF orientation 6 saying how to show it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(img.transpose(Image.Transpose.ROTATE_90), exif=exif)


def peak(cells: list[tuple[int, int]]) -> np.ndarray:
    """A 7×7 map with nearly all its mass on `cells`."""
    att = np.full((7, 7), 0.001)
    for r, c in cells:
        att[r, c] = 1.0
    return att / att.sum()


def test_top_mass_takes_the_fewest_strongest_cells() -> None:
    assert sorted(zip(*np.nonzero(top_mass_mask(HAND, 0.6)), strict=True)) == [(1, 1), (2, 2), (3, 4)]
    # Exactly 0.80 is reached with the fourth cell: float rounding must not pull in a fifth.
    assert top_mass_mask(HAND, 0.8).sum() == 4
    assert top_mass_mask(HAND, 0.1).sum() == 1
    assert top_mass_mask(HAND, 1.0).sum() == 8  # every cell with mass, no zero cell
    assert top_mass_mask(np.zeros((3, 3)), 0.6).all()


def test_regions_are_eight_connected() -> None:
    regions = components(top_mass_mask(HAND, 0.6))
    assert regions == [[(1, 1), (2, 2)], [(3, 4)]]  # (1,1) and (2,2) touch at a corner


def test_grid_box_by_hand() -> None:
    # 0.6: {(1,1), (2,2)} holds 0.45 against 0.20 for (3,4); 4-connectivity would pick (2,2) alone.
    assert grid_box(HAND, 0.6) == (1, 1, 2, 2)
    assert grid_box(HAND, 0.1) == (2, 2, 2, 2)
    # 0.9 adds (0,4), a region of its own (0.10), beside {(1,1), (1,2), (2,2)} (0.60).
    assert grid_box(HAND, 0.9) == (1, 1, 2, 2)
    # 1.0: (0,1), (2,1) join the middle region; (3,3) links it to (3,4); (0,4) stays alone.
    assert grid_box(HAND, 1.0) == (0, 1, 3, 4)


def test_equal_regions_prefer_mass_then_first() -> None:
    att = np.zeros((3, 5))
    att[0, 0] = att[0, 4] = 0.3  # two single-cell regions of equal mass
    att[2, 2] = 0.4
    assert grid_box(att, 0.6) == (2, 2, 2, 2)  # the 0.4 cell and the first 0.3 cell; 0.4 wins
    att[2, 2] = 0.3
    att[1, 2] = 0.1
    assert grid_box(att / att.sum(), 1.0) == (1, 2, 2, 2)  # 0.4 in two cells beats 0.3 in one


def test_box_on_a_non_square_photograph() -> None:
    """coffee is 600×400: resized to 384×256, cropped at (80, 16); the crop is 125..475 × 25..375 in the
    original, so each of the 7×7 cells is 50 pixels square there."""
    photo = coffee()
    _, geo = decode(jpeg(photo), MANIFEST, 10**8)
    assert (geo.width, geo.height) == (600, 400)
    assert geo.crop == pytest.approx((125, 25, 475, 375))
    assert attention_box(peak([(1, 3), (2, 4)]), geo, 0.6) == [275, 75, 375, 175]
    assert attention_box(peak([(0, 5), (0, 6)]), geo, 0.6) == [375, 25, 475, 75]
    assert attention_box(peak([(3, 3)]), geo, 1.0) == [125, 25, 475, 375]  # all cells: the whole crop


def test_box_on_an_exif_rotated_photograph() -> None:
    """Stored 400×600 and tagged to be turned: the box is in the upright picture, where the same
    pixels are as in the unrotated file."""
    photo = coffee()
    stored = sideways(photo)
    assert Image.open(io.BytesIO(stored)).size == (400, 600)
    _, geo = decode(stored, MANIFEST, 10**8)
    assert (geo.width, geo.height) == (600, 400)
    box = attention_box(peak([(0, 5), (0, 6)]), geo, 0.6)
    assert box == [375, 25, 475, 75]  # in the stored orientation it would be [275, 125, 375, 175]
    shown = np.asarray(load_original(stored, 10**8).crop(box), dtype=np.float64)
    want = np.asarray(photo.crop(box), dtype=np.float64)
    assert np.abs(shown - want).mean() < 6  # the same part of the photograph (JPEG noise aside)


def test_box_clipped_to_a_padded_crop() -> None:
    """A model whose crop is larger than the resized photograph (torchvision pads): the box stays on it."""
    wide = Manifest.model_validate({**MANIFEST.model_dump(), "resize": 200})
    # Resized 300×200; the 224 crop starts at x 38 (76 in the original) and 12 rows above the image.
    _, geo = decode(jpeg(coffee()), wide, 10**8)
    assert geo.crop == pytest.approx((76, -24, 524, 424))
    assert attention_box(peak([(3, 3)]), geo, 1.0) == [76, 0, 524, 400]
