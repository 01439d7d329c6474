"""The service's preprocessing against a plain Pillow reference written here: upright, RGB, shorter
side resized (the longer one truncated, as torchvision does), centre crop; on scikit-image photographs."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from simpool_serve.service.engine.preprocess import decode, decode_image
from simpool_serve.spec import Manifest, fingerprint, load_manifest, sha256_file
from tests.helpers.tiny_model import write_tiny_model

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # square, wide, wide, tall, grayscale
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def manifest(size: int, resize: int, interpolation: str) -> Manifest:
    return Manifest(
        name="m",
        arch="a",
        embedding_dim=1,
        num_classes=0,
        input_size=size,
        grid=(1, 1),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize=resize,
        interpolation=interpolation,  # type: ignore[arg-type]
        onnx_sha256="00" * 32,
    )


def pillow_reference(img: Image.Image, m: Manifest) -> np.ndarray:
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    size = (m.resize, m.resize * h // w) if w <= h else (m.resize * w // h, m.resize)
    img = img.resize(size, FILTERS[m.interpolation])
    left, top = round((size[0] - m.input_size) / 2), round((size[1] - m.input_size) / 2)
    return np.asarray(img.crop((left, top, left + m.input_size, top + m.input_size)))


@pytest.fixture(scope="module")
def pngs() -> dict[str, bytes]:
    import skimage.data as data

    out = {}
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buf, "PNG")
        out[name] = buf.getvalue()
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["one thread", "resize shared"])
@pytest.mark.parametrize("interpolation", sorted(FILTERS))
@pytest.mark.parametrize(("size", "resize"), [(224, 256), (32, 36)])
def test_png_photographs_equal_the_pillow_reference(
    pngs: dict[str, bytes], interpolation: str, size: int, resize: int, shared: bool
) -> None:
    """Decoded on one thread, or with the resize shared with a helper thread (a lone request's)."""
    m = manifest(size, resize, interpolation)
    for name, png in pngs.items():
        with ThreadPoolExecutor(1) as helper:
            got = decode(png, m, 10**8, helper=helper if shared else None)[0]
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, pillow_reference(Image.open(io.BytesIO(png)), m), err_msg=name)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_equals_the_pillow_reference(pngs: dict[str, bytes], orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(io.BytesIO(pngs["coffee"])).save(buf, "JPEG", quality=90, exif=exif)
    m = manifest(224, 256, "bicubic")
    got = decode_image(buf.getvalue(), m, 10**8, draft=False)
    np.testing.assert_array_equal(got, pillow_reference(Image.open(io.BytesIO(buf.getvalue())), m))


def test_a_written_manifest_reads_back_and_names_its_graph(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    written = write_tiny_model(folder)
    read = load_manifest(folder / "manifest.json")
    assert read == written and fingerprint(read) == fingerprint(written)
    onnx_bytes = (folder / "model.onnx").read_bytes()
    assert read.onnx_sha256 == sha256_file(folder / "model.onnx") == hashlib.sha256(onnx_bytes).hexdigest()
    assert (folder / "manifest.json").read_text().endswith("}\n")
    other = write_tiny_model(tmp_path / "other", seed=1)
    assert fingerprint(other) != fingerprint(written)  # other weights: another graph, another fingerprint
