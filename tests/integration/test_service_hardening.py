"""Inputs that are legal but costly or odd: JPEG scan bombs, deep images, wrapped base64, requests that
would hog the decode threads, PNG overlays that hold large originals. Stage tests, then a live server."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from simpool_serve.service.engine.decode import payload_bytes
from simpool_serve.service.engine.jpeg import count_scans
from simpool_serve.service.engine.overlay import attention_png
from simpool_serve.service.engine.preprocess import (
    MAX_JPEG_SCANS,
    ImageError,
    ImageTooLarge,
    decode_image,
    geometry,
)
from tests.helpers import Server, start_server
from tests.unit.test_service_stages import encode, manifest

# -- JPEG scans -----------------------------------------------------------------------------------


def repeat_last_scan(jpeg: bytes, times: int) -> bytes:
    """The JPEG with its last scan (SOS header + entropy-coded data, up to EOI) written `times` more times:
    what a scan bomb does, with real data (libjpeg decodes the result, warning about the progression)."""
    last = jpeg.rindex(b"\xff\xda")
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end] + jpeg[last:end] * times + jpeg[end:]


def test_jpeg_scans_are_counted_from_the_markers(photos: dict[str, Path]) -> None:
    photo = Image.open(photos["astronaut.jpg"])
    baseline, progressive = encode(photo, "JPEG", quality=90), encode(photo, "JPEG", progressive=True)
    assert count_scans(baseline, 100) == 1
    assert count_scans(progressive, 100) == 10  # libjpeg's standard progression
    assert count_scans(repeat_last_scan(progressive, 5), 100) == 15
    assert count_scans(repeat_last_scan(progressive, 500), 100) == 101  # stops counting past the limit
    # An EXIF thumbnail is a whole JPEG inside APP1: its scan is not the image's.
    thumb = encode(photo.resize((64, 64)), "JPEG")
    exif = Image.Exif()
    exif[0x010E] = "x"  # ImageDescription; the thumbnail goes into the raw APP1 below
    app1_payload = b"Exif\x00\x00" + exif.tobytes() + thumb
    app1 = b"\xff\xe1" + (len(app1_payload) + 2).to_bytes(2, "big") + app1_payload
    assert count_scans(progressive[:2] + app1 + progressive[2:], 100) == 10


def test_jpeg_scan_bomb_is_refused_before_decoding(photos: dict[str, Path]) -> None:
    progressive = encode(Image.open(photos["coffee.jpg"]), "JPEG", progressive=True)
    bomb = repeat_last_scan(progressive, MAX_JPEG_SCANS)
    Image.open(io.BytesIO(bomb)).load()  # libjpeg itself takes it: only the count tells it apart
    with pytest.raises(ImageError, match=f"over {MAX_JPEG_SCANS} scans"):
        decode_image(bomb, manifest(), 10**8)
    # Ordinary files, progressive or not, with a few repeated scans still decode.
    for ok in (
        progressive,
        repeat_last_scan(progressive, 20),
        encode(Image.open(photos["coffee.jpg"]), "JPEG"),
    ):
        assert decode_image(ok, manifest(), 10**8).shape == (224, 224, 3)


# -- deep images ----------------------------------------------------------------------------------


def test_16_bit_scale_does_not_depend_on_the_pixels() -> None:
    """16-bit samples span 0-65535 (÷257): a dark image stays dark, and one bright pixel changes nothing
    else (the scale used to be chosen from the image's maximum: 255 or 65535)."""
    m = manifest()
    ramp = np.tile(np.linspace(0, 255, 96).astype(np.uint16), (80, 1))  # values ≤ 255: very dark in 16 bits
    dark = decode_image(encode(Image.fromarray(ramp), "PNG"), m, 10**8)
    assert dark.max() <= 1
    brighter = ramp.copy()
    brighter[0, 0] = 256
    other = decode_image(encode(Image.fromarray(brighter), "PNG"), m, 10**8)
    assert np.abs(other.astype(int) - dark.astype(int)).max() <= 1
    full = decode_image(encode(Image.fromarray(ramp * 257), "PNG"), m, 10**8)
    eight_bit = decode_image(encode(Image.fromarray(ramp.astype(np.uint8)), "PNG"), m, 10**8)
    assert np.abs(full.astype(int) - eight_bit.astype(int)).max() <= 1  # full range = the 8-bit picture


# -- base64 payloads ------------------------------------------------------------------------------


def test_wrapped_base64_is_measured_without_its_line_breaks() -> None:
    data = np.random.default_rng(0).integers(0, 256, 99_000, dtype=np.uint8).tobytes()
    wrapped = base64.encodebytes(data).decode()  # 76-character lines
    assert len(wrapped) // 4 * 3 > 100_000  # counted with the newlines, it looked too big
    assert payload_bytes(wrapped, 100_000) == data
    # The estimate lets up to 3 bytes too many through; the decoded length is checked exactly.
    with pytest.raises(ImageTooLarge, match="100001 bytes"):
        payload_bytes(base64.b64encode(data[:1] * 100_001).decode(), 100_000)


# -- overlay memory -------------------------------------------------------------------------------


def test_attention_png_blends_in_bands() -> None:
    """The blend runs in float32 over a band of rows at a time, not over the whole crop: a 50-megapixel
    request peaked at 1.4 GB with the whole crop, 575 MB in bands (same PNG)."""
    import tracemalloc

    original = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8))
    att = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    tracemalloc.start()
    try:
        attention_png(original, geometry(*original.size, manifest()), att)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * original.width * original.height * 3  # 4.1x measured; 6.6x over the whole crop


# -- a live server --------------------------------------------------------------------------------


def blank_png(side: int) -> bytes:
    """Tiny to send, a full `side`² image to inflate and resize: decoding costs CPU, not bandwidth."""
    return encode(Image.new("RGB", (side, side), (90, 120, 150)), "PNG")


def test_a_large_request_does_not_hold_up_a_small_one(model_repo: Path, tmp_path: Path) -> None:
    """48 large images arrive first; a one-image request sent just after is answered long before them.
    Before, all 48 decodes queued ahead of it in the pool (a lone image waited 15.7 s behind 64)."""
    env = {"SIMPOOL_DECODE_WORKERS": "2", "SIMPOOL_MAX_IMAGES_PER_REQUEST": "64"}
    big = [("images", blank_png(3000))] * 48
    small = {"images": [base64.b64encode(blank_png(300)).decode()]}
    done: dict[str, float] = {}
    with start_server(model_repo, tmp_path, env) as server, server.client() as c:
        started = threading.Event()

        def send_big() -> int:
            started.set()
            r = httpx.post(f"{server.url}/embed", files=big, timeout=120)
            done["big"] = time.monotonic()
            return r.status_code

        with ThreadPoolExecutor(1) as pool:
            big_status = pool.submit(send_big)
            started.wait()
            time.sleep(0.5)  # the big request is decoding
            r = c.post("/embed", json=small)
            done["small"] = time.monotonic()
            assert r.status_code == 200, r.text
            assert big_status.result() == 200
    assert done["small"] < done["big"], "the one-image request waited for all 48 large images"


def test_png_overlays_wait_for_a_slot_and_always_give_it_back(
    model_repo: Path, tmp_path: Path, photos: dict[str, Path]
) -> None:
    """One decode thread: two overlays in progress at once. Failed overlays (bad image, unknown model) and
    concurrent ones must all return their slot, or the next overlay would wait out its deadline (504)."""
    env = {"SIMPOOL_DECODE_WORKERS": "1", "SIMPOOL_INFERENCE_LANES": "1", "SIMPOOL_REQUEST_TIMEOUT_S": "20"}
    photo = photos["chelsea.jpg"].read_bytes()
    with start_server(model_repo, tmp_path, env) as server, server.client() as c:
        for _ in range(3):
            bad = c.post("/attention?format=png", files=[("images", b"not an image")])
            assert bad.status_code == 400 and "image 0" in bad.json()["detail"]
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(
                        f"{server.url}/attention?format=png", files=[("images", photo)], timeout=60
                    ),
                    range(6),
                )
            )
        assert [a.status_code for a in answers] == [200] * 6
        assert all(a.content.startswith(b"\x89PNG") for a in answers)
        again = c.post("/attention?format=png", files=[("images", photo)])
        assert again.status_code == 200


def test_unknown_model_name_is_not_echoed_whole(server: Server) -> None:
    with server.client() as c:
        r = c.post("/embed", json={"images": ["x"], "model": "m" * 100_000})
    assert r.status_code == 404
    assert len(r.content) < 1000 and "mmm..." in r.json()["detail"]
