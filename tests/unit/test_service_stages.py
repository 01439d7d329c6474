"""Unit tests of the stages that need no graph: manifest, payloads, multipart, preprocessing, encoding."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from simpool_serve.service.app import create_app
from simpool_serve.service.encoding import attention_maps, embeddings, json_bytes, predictions
from simpool_serve.service.engine.decode import payload_bytes
from simpool_serve.service.engine.errors import EngineError
from simpool_serve.service.engine.limits import Limits
from simpool_serve.service.engine.overlay import attention_png
from simpool_serve.service.engine.preprocess import (
    ImageError,
    ImageTooLarge,
    decode_image,
    geometry,
    load,
    load_original,
    open_image,
    own_pixel_limit,
)
from simpool_serve.service.http_status import status_of
from simpool_serve.service.parsing import parse_multipart
from simpool_serve.service.settings import Settings, available_cores
from simpool_serve.spec import Manifest, ManifestError, fingerprint, load_manifest

MANIFEST = {
    "name": "m",
    "arch": "resnet18",
    "embedding_dim": 4,
    "num_classes": 3,
    "input_size": 224,
    "grid": [7, 7],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "resize": 256,
    "interpolation": "bicubic",
    "gamma": 2.0,
    "weights": "random",
    "checkpoint_sha256": None,
    "onnx_sha256": "ab" * 32,
    "labels": ["cat", "dog", "bird"],
    "opset": 18,
    "precision": "fp32",
    "created_at": "2026-01-01T00:00:00Z",
    "exporter_version": "0.1.0",
}


def manifest(**changes: object) -> Manifest:
    return Manifest.model_validate({**MANIFEST, **changes})


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# -- settings and manifest ------------------------------------------------------------------------


def test_settings_from_env_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMPOOL_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("SIMPOOL_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("SIMPOOL_API_KEY", "s3cret")
    s = Settings(port=9000)
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.max_batch_size == 4 and s.port == 9000
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.resolved_intra_op_threads() >= 1 and s.resolved_decode_workers() >= 1
    assert s.resolved_max_batch_size("CUDAExecutionProvider") == 4  # set explicitly: as given
    auto = Settings(max_batch_size=0)
    assert auto.resolved_max_batch_size("CPUExecutionProvider") == 4
    assert auto.resolved_max_batch_size("CUDAExecutionProvider") == 32
    pinned = Settings(decode_workers=3, intra_op_threads=5)
    for gpu in (False, True):
        assert (pinned.resolved_decode_workers(gpu), pinned.resolved_intra_op_threads(gpu)) == (3, 5)
    cores = available_cores()  # the automatic CPU budget never asks for more cores than there are (> 2)
    assert auto.resolved_decode_workers() + auto.resolved_intra_op_threads() <= max(cores, 3)


def test_inference_lanes_split_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto: two single-thread lanes sharing one pool with decoding on a 2-core CPU; one lane with more
    cores (decoding has cores of its own), on a GPU, or with one thread. Explicit values win."""
    for name in ("SIMPOOL_INTRA_OP_THREADS", "SIMPOOL_INFERENCE_LANES", "SIMPOOL_DECODE_WORKERS"):
        monkeypatch.delenv(name, raising=False)  # the automatic rules, whatever the environment says
    monkeypatch.setattr("simpool_serve.service.engine.config.available_cores", lambda: 2)
    two = Settings()
    assert (two.resolved_inference_lanes(), two.lane_threads(), two.shared_compute_pool()) == (2, 1, True)
    assert Settings(intra_op_threads=1).resolved_inference_lanes() == 1
    assert Settings().resolved_inference_lanes(gpu=True) == 1
    assert not Settings().shared_compute_pool(gpu=True)
    monkeypatch.setattr("simpool_serve.service.engine.config.available_cores", lambda: 8)
    eight = Settings()
    assert (eight.resolved_inference_lanes(), eight.shared_compute_pool()) == (1, False)
    pinned = Settings(intra_op_threads=6, inference_lanes=3)
    assert (pinned.resolved_inference_lanes(), pinned.lane_threads()) == (3, 2)
    assert not pinned.shared_compute_pool()
    assert Settings(intra_op_threads=2, inference_lanes=4).lane_threads() == 1  # never below one


def test_manifest_tolerates_extra_fields_and_rejects_missing(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text(json.dumps({**MANIFEST, "future_field": [1, 2]}))
    m = load_manifest(tmp_path / "ok.json")
    assert m.model_dump()["future_field"] == [1, 2]
    broken = dict(MANIFEST)
    del broken["resize"]
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="resize"):
        load_manifest(tmp_path / "bad.json")


def test_fingerprint_tracks_graph_and_preprocessing_only() -> None:
    base = fingerprint(manifest())
    assert base == fingerprint(manifest(created_at="2030-01-01", labels=None))  # not part of the answer
    for change in (
        {"onnx_sha256": "cd" * 32},
        {"resize": 248},
        {"interpolation": "bilinear"},
        {"input_size": 256},
        {"mean": [0.5, 0.5, 0.5]},
        {"std": [0.5, 0.5, 0.5]},
    ):
        assert fingerprint(manifest(**change)) != base, change
    assert len(base) == 16


# -- payloads and multipart -----------------------------------------------------------------------


def test_payload_forms() -> None:
    raw = b"\x89PNG fake bytes"
    b64 = base64.b64encode(raw).decode()
    assert payload_bytes(raw, 100) == raw
    assert payload_bytes(b64, 100) == raw
    assert payload_bytes(f"data:image/png;base64,{b64}", 100) == raw
    assert payload_bytes(f"DATA:image/PNG;BASE64,{b64}", 100) == raw  # case-insensitive (RFC 2397)
    assert payload_bytes(b64[:8] + "\n" + b64[8:], 100) == raw  # MIME line breaks
    assert payload_bytes("YWJj====", 100) == b"abc"  # padding past a whole quantum, as the stdlib takes it
    for bad in ("not base64 at all!", "YWJ", "YW=j", "éé"):
        with pytest.raises(ImageError, match="invalid base64"):
            payload_bytes(bad, 100)
    with pytest.raises(ImageError, match="data URI"):
        payload_bytes("data:image/png,rawtext", 100)
    with pytest.raises(ImageTooLarge):
        payload_bytes(raw, 4)
    with pytest.raises(ImageTooLarge):
        payload_bytes(base64.b64encode(b"x" * 1000).decode(), 100)


def multipart(files: list[bytes], data: dict[str, str]) -> tuple[bytes, str]:
    req = httpx.Request(
        "POST",
        "http://127.0.0.1/",
        files=[("images", (f"{i}.png", f)) for i, f in enumerate(files)],
        data=data,
    )
    return req.read(), req.headers["content-type"]


LIMITS = Limits(max_images=8, max_request_bytes=10**8, max_image_bytes=10**8, max_image_pixels=10**8)


def test_multipart_keeps_order_and_fields() -> None:
    body, ctype = multipart([b"first", b"second", b"third"], {"model": "vit", "top_k": "3"})
    images, fields = parse_multipart(body, ctype, LIMITS)
    assert images == [b"first", b"second", b"third"]
    assert fields == {"model": "vit", "top_k": "3"}


def test_multipart_limits_and_malformed() -> None:
    body, ctype = multipart([b"a"] * 5, {})
    with pytest.raises(EngineError) as exc:
        parse_multipart(body, ctype, Limits(4, 10**8, 10**8, 10**8))
    assert status_of(exc.value) == 413
    with pytest.raises(EngineError) as exc:
        parse_multipart(body[: len(body) // 2], ctype, LIMITS)
    assert status_of(exc.value) == 422
    with pytest.raises(EngineError) as exc:
        parse_multipart(body, "multipart/form-data", LIMITS)
    assert status_of(exc.value) == 422


def test_multipart_with_a_flood_of_parts_is_refused_early() -> None:
    """Parts are parsed on the event loop: 100 MB of tiny form fields would stall the server for ~10 s."""
    body, ctype = multipart([b"img"], {f"f{i}": "v" for i in range(64)})
    images, fields = parse_multipart(body, ctype, LIMITS)  # a few dozen fields are fine
    assert images == [b"img"] and len(fields) == 64
    boundary = ctype.split("boundary=")[1].encode()
    part = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    head, _, _ = body.rpartition(b"--" + boundary + b"--")
    flood = head + part * 1_000_000 + b"--" + boundary + b"--\r\n"  # ~70 MB: seconds to parse whole
    start = time.perf_counter()
    with pytest.raises(EngineError) as exc:
        parse_multipart(flood, ctype, LIMITS)
    assert status_of(exc.value) == 422 and "parts" in exc.value.detail
    assert time.perf_counter() - start < 2  # stopped at the limit, not after the whole body


# -- preprocessing --------------------------------------------------------------------------------


def torchvision_reference(img: Image.Image, m: Manifest) -> np.ndarray:
    """timm's eval transform, as torchvision runs it (the tests may import torch; the service may not)."""
    from torchvision import transforms as T

    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    tf = T.Compose([T.Resize(m.resize, interpolation=interp[m.interpolation]), T.CenterCrop(m.input_size)])
    return np.asarray(tf(img.convert("RGB")))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_equals_timm_eval_transform(photos: dict[str, Path], interpolation: str) -> None:
    m = manifest(interpolation=interpolation)
    for name, path in photos.items():
        data = path.read_bytes()
        got = decode_image(data, m, 10**8)
        assert got.shape == (224, 224, 3) and got.dtype == np.uint8
        with Image.open(path) as img:
            want = torchvision_reference(img, m)
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_small_and_odd_sized_images() -> None:
    m = manifest()
    for size in ((1, 1), (300, 7), (7, 300), (224, 224), (100, 500)):
        img = Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        )
        got = decode_image(encode(img, "PNG"), m, 10**8)
        np.testing.assert_array_equal(got, torchvision_reference(img, m), err_msg=str(size))
    # A manifest whose resize is below the crop: torchvision pads with zeros, and so do we.
    odd = manifest(resize=201, input_size=224)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 451, 3), dtype=np.uint8))
    np.testing.assert_array_equal(
        decode_image(encode(img, "PNG"), odd, 10**8), torchvision_reference(img, odd)
    )


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_is_torchvision_at_every_aspect(photos: dict[str, Path], interpolation: str) -> None:
    """Landscape, portrait, square, wide and odd sizes, and a resize below the crop (padding)."""
    photo = Image.open(photos["chelsea.jpg"]).convert("RGB")
    sizes = [(500, 375), (375, 500), (640, 360), (360, 640), (313, 313), (1001, 237), (241, 799), (230, 900)]
    for m in (manifest(interpolation=interpolation), manifest(resize=201, input_size=224)):
        for size in sizes:
            img = photo.resize(size, Image.Resampling.BICUBIC)
            got = decode_image(encode(img, "PNG"), m, 10**8)
            np.testing.assert_array_equal(got, torchvision_reference(img, m), err_msg=f"{size} {m.resize}")


def test_elongated_image_is_not_resized_whole(
    photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 100-byte 1×60000 PNG would resize to 256×15 million pixels (gigabytes): only the crop's band is."""
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)  # type: ignore[arg-type]

    m = manifest()
    photo = Image.open(photos["chelsea.jpg"]).convert("RGB")
    for size in ((10, 3000), (3000, 10)):  # 19.7 megapixels once resized
        img = photo.resize(size, Image.Resampling.BICUBIC)
        want = torchvision_reference(img, m)
        sizes.clear()
        with monkeypatch.context() as patch:
            patch.setattr(Image.Image, "resize", spy)
            got = decode_image(encode(img, "PNG"), m, 10**8)
        assert max(w * h for w, h in sizes) <= 2**24, sizes
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, size
    tiny = png_bomb(1, 60000)
    assert len(tiny) < 1000
    sizes.clear()
    monkeypatch.setattr(Image.Image, "resize", spy)
    assert decode_image(tiny, m, 10**8).shape == (224, 224, 3)
    assert max(w * h for w, h in sizes) <= 2**24, sizes


_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def test_exif_orientation_is_applied(photos: dict[str, Path]) -> None:
    """A photo stored sideways with an EXIF tag is seen upright (PNG: lossless, so exactly)."""
    m = manifest()
    upright = Image.open(photos["rocket.jpg"]).convert("RGB")
    want = decode_image(encode(upright, "PNG"), m, 10**8)
    for orientation, inverse in _INVERSE.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = encode(upright.transpose(inverse), "PNG", exif=exif)
        np.testing.assert_array_equal(decode_image(stored, m, 10**8), want, err_msg=str(orientation))
        assert load_original(stored, 10**8).size == upright.size


def test_every_mode_becomes_rgb(photos: dict[str, Path]) -> None:
    m = manifest()
    rgb = Image.open(photos["coffee.jpg"]).convert("RGB")
    gray = rgb.convert("L")
    cases: dict[str, bytes] = {
        "L": encode(gray, "PNG"),
        "LA": encode(rgb.convert("LA"), "PNG"),
        "RGBA": encode(rgb.convert("RGBA"), "PNG"),
        "P": encode(rgb.convert("P"), "PNG"),
        "P+transparency": encode(rgb.convert("P"), "PNG", transparency=0),
        "1": encode(rgb.convert("1"), "PNG"),
        "CMYK": encode(rgb.convert("CMYK"), "JPEG"),
        "CMYK tiff": encode(rgb.convert("CMYK"), "TIFF"),
        "I;16": encode(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG"),
        "F": encode(Image.fromarray(np.asarray(gray).astype(np.float32) / 255.0), "TIFF"),
        "BMP": encode(rgb, "BMP"),
        "WebP": encode(rgb, "WEBP"),
        "TIFF": encode(rgb, "TIFF"),
    }
    for name, data in cases.items():
        out = decode_image(data, m, 10**8)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8, name
    # Deep grayscale is scaled to 8 bits, not clipped: it matches the 8-bit picture.
    want = decode_image(cases["L"], m, 10**8)
    for deep in ("I;16", "F"):
        diff = np.abs(decode_image(cases[deep], m, 10**8).astype(int) - want.astype(int))
        assert diff.max() <= 1, deep


def test_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_image(data, manifest(), 10**8)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def png_bomb(width: int, height: int) -> bytes:
    """A real PNG of width×height black pixels: tiny on disk, huge once decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + grey pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_limit_above_pillows_own_guard_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow alone refuses anything over ~179 M pixels; with the service's limit in charge, a limit
    of 250 M admits a 196 M-pixel image (read from its header only) and 100 M refuses it."""
    # Pillow's default (a Service built earlier in this process may have lifted it); restored afterwards.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024 * 1024 * 1024 // 4 // 3)
    bomb = png_bomb(14000, 14000)
    with pytest.raises(ImageTooLarge):
        open_image(bomb, 250_000_000)  # Pillow's guard
    own_pixel_limit()
    assert open_image(bomb, 250_000_000).size == (14000, 14000)
    with pytest.raises(ImageTooLarge, match="196000000 pixels, over the limit of 100000000"):
        open_image(bomb, 100_000_000)


def test_decompression_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_bomb(9000, 9000)  # 81 megapixels in a few hundred kB
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageTooLarge, match="81000000 pixels"):
        decode_image(bomb, manifest(), max_pixels=50_000_000)
    # Where Pillow's own guard is on (outside the service), its refusal is a 413 too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024 * 1024 * 1024 // 4 // 3)
    with pytest.raises(ImageTooLarge):
        decode_image(png_bomb(20000, 20000), manifest(), max_pixels=10**12)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"GIF89a" + b"\xff" * 20,
        b"%PDF-1.4 not an image",
    ],
)
def test_garbage_is_an_image_error(data: bytes) -> None:
    with pytest.raises(ImageError) as exc:
        decode_image(data, manifest(), 10**8)
    assert status_of(exc.value) == 400


def test_truncated_jpeg_is_an_image_error(photos: dict[str, Path]) -> None:
    data = photos["astronaut.jpg"].read_bytes()
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(data[: len(data) // 3], manifest(), 10**8)


def test_draft_box_maps_back_onto_the_original(photos: dict[str, Path]) -> None:
    """A JPEG far larger than the resize target decodes at a fraction of its size, sideways or not."""
    big = Image.open(photos["chelsea.jpg"]).convert("RGB").resize((2400, 1600), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(big.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    img, size, box = load(data, 10**9, draft_short=512)
    assert size == (2400, 1600)
    assert img.size[0] < 2400 and min(img.size) >= 512
    assert box[2] - box[0] == pytest.approx(img.size[0], abs=1) and box[3] - box[1] == pytest.approx(
        img.size[1], abs=1
    )


# -- encoding -------------------------------------------------------------------------------------


def test_embeddings_normalise_and_encode() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, 8)).astype(np.float32)
    results = [{"embedding": vecs[0]}, None, {"embedding": vecs[2]}]
    plain = embeddings(results, normalize=False, encoding="float")
    assert plain[1] is None
    # Written in float32's shortest round-trip form: the JSON gives back the graph's exact values.
    sent = json.loads(json_bytes({"embeddings": plain}))["embeddings"]
    assert sent[1] is None
    np.testing.assert_array_equal(np.asarray(sent[0], dtype=np.float32), vecs[0])
    normed = embeddings(results, normalize=True, encoding="float")
    assert np.linalg.norm(normed[2]) == pytest.approx(1.0, abs=1e-6)
    b64 = embeddings(results, normalize=True, encoding="base64")
    decoded = np.frombuffer(base64.b64decode(b64[2]), dtype="<f4")
    np.testing.assert_allclose(decoded, normed[2], rtol=1e-7)


def test_non_finite_outputs_are_refused_not_written_as_null() -> None:
    bad = np.array([0.5, np.nan, 1.0], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        embeddings([{"embedding": bad}], normalize=False, encoding="float")
    with pytest.raises(ValueError, match="NaN or infinite"):
        attention_maps([{"attention": np.full((2, 2), np.inf, dtype=np.float32)}])


def test_predictions_are_softmax_top_k() -> None:
    logits = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 10.0]], dtype=np.float32)
    m = manifest()
    out = predictions([{"logits": logits[0]}, {"logits": logits[1]}], m, top_k=2)
    p0 = np.exp(logits[0] - logits[0].max())
    p0 /= p0.sum()
    assert [p["index"] for p in out[0]] == [1, 2]
    assert [p["label"] for p in out[0]] == ["dog", "bird"]
    assert out[0][0]["score"] == pytest.approx(p0[1], rel=1e-6)
    assert len(predictions([{"logits": logits[1]}], m, top_k=50)[0]) == 3  # clamped to the classes
    assert predictions([{"logits": logits[0]}], manifest(labels=None), 1)[0][0]["label"] == "1"


def test_attention_png_overlays_the_centre_crop() -> None:
    m = manifest()
    rng = np.random.default_rng(0)
    original = Image.fromarray(
        rng.integers(100, 156, (400, 600, 3), dtype=np.uint8)
    )  # the crop: a centre square
    att = np.zeros((7, 7), np.float32)
    att[3, 3] = 1.0
    png = Image.open(io.BytesIO(attention_png(original, geometry(*original.size, m), att)))
    assert png.size == original.size and png.format == "PNG"
    out = np.asarray(png.convert("RGB")).astype(int)
    orig = np.asarray(original).astype(int)
    left, top, right, bottom = (round(v) for v in geometry(*original.size, m).crop)
    assert (left, top, right, bottom) == (125, 25, 475, 375)
    # Outside the crop: the photograph, dimmed. Inside: a heat map, hottest (red) at the peak.
    np.testing.assert_allclose(out[:, :left], orig[:, :left] * 0.4, atol=1)
    centre = out[200, 300]
    corner = out[top + 5, left + 5]
    assert centre[0] > corner[0] and corner[2] > centre[2]


def test_attention_png_memory_stays_near_the_image_size() -> None:
    """float64 copies of the photograph made one 45-megapixel PNG request peak at 4.5 GB (~30x)."""
    import tracemalloc

    original = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1500, 3), dtype=np.uint8))
    att = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    geo = geometry(*original.size, manifest())
    tracemalloc.start()
    try:
        attention_png(original, geo, att)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * original.width * original.height * 3


def test_readyz_head_says_503_while_loading_too(tmp_path: Path) -> None:
    """A load balancer probing with HEAD must see "not ready" as GET does: 503, `Retry-After`, no body."""
    app = create_app(Settings(model_dir=tmp_path))
    reasons = ["models are loading", None]
    app.state.engine = SimpleNamespace(not_ready_reason=lambda: reasons[0])  # no lifespan: nothing loads
    client = TestClient(app)
    for status in (503, 200):
        get, head = client.get("/readyz"), client.head("/readyz")
        assert head.status_code == get.status_code == status and head.content == b""
        assert head.headers.get("retry-after") == get.headers.get("retry-after")
        reasons.pop(0)
    assert client.head("/healthz").status_code == 200
