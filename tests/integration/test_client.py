"""SimPoolClient / AsyncSimPoolClient against a real simpool-serve on loopback."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simpool_serve.client import (
    AsyncSimPoolClient,
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    SimPoolClient,
)
from tests.helpers import Server, cosine, start_server

API_KEY = "test-key-5"
LIMITED_BYTES = 400_000  # camera.png + logo.png (322 kB, 430 kB as base64) do not fit in one request


@pytest.fixture(scope="module")
def limited_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that takes 2 images and 400 kB per request, and wants an API key."""
    env = {
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
        "SIMPOOL_MAX_IMAGES_PER_REQUEST": "2",
        "SIMPOOL_MAX_REQUEST_BYTES": str(LIMITED_BYTES),
        "SIMPOOL_API_KEY": API_KEY,
    }
    with start_server(model_repo, tmp_path_factory.mktemp("limited-logs"), env) as s:
        yield s


@pytest.fixture(scope="module")
def five(photos: dict[str, Path]) -> list[Path]:
    return [photos[n] for n in ("astronaut.jpg", "coffee.jpg", "camera.png", "logo.png", "rocket.jpg")]


def test_embed_returns_normalised_rows_in_order_with_fingerprint(server: Server, five: list[Path]) -> None:
    with SimPoolClient(server.url) as client:
        models = {m.name: m for m in client.models()}
        result = client.embed(five)
        single = client.embed([five[3]])
        raw = client.embed(five[:2], normalize=False)
    assert result.model == "resnet18" and models["resnet18"].default
    assert result.fingerprint == models["resnet18"].fingerprint != ""
    assert result.embeddings.dtype == np.float32
    assert result.embeddings.shape == (5, models["resnet18"].embedding_dim) == (5, result.dim)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert result.ok.all() and not result.errors
    assert cosine(single.embeddings[0], result.embeddings[3]) > 0.9999  # order kept
    assert not raw.normalized and cosine(raw.embeddings[1], result.embeddings[1]) > 0.9999


def test_paths_bytes_pil_and_arrays_are_the_same_image(server: Server, photos: dict[str, Path]) -> None:
    png = photos["camera.png"]
    pil = Image.open(png)
    array = np.asarray(pil.convert("RGB"))
    with SimPoolClient(server.url) as client:
        result = client.embed([png, str(png), png.read_bytes(), pil, array])
    for row in result.embeddings[1:]:
        assert cosine(row, result.embeddings[0]) > 0.9999
    with SimPoolClient(server.url) as client, pytest.raises(TypeError, match="uint8"):
        client.embed([array.astype(np.float32)])


def test_splits_to_the_servers_limit_with_key(
    limited_server: Server, server: Server, five: list[Path]
) -> None:
    with SimPoolClient(server.url) as client:
        expected = client.embed(five)
    limits = {"max_images_per_request": 2, "max_request_bytes": LIMITED_BYTES}
    with SimPoolClient(limited_server.url, api_key=API_KEY, **limits) as client:
        got = client.embed(five)
        # A bad image in the second request: its index is the caller's, not the request's.
        skipped = client.embed([five[0], five[1], b"not an image", five[2]], on_error="skip")
    for a, b in zip(expected.embeddings, got.embeddings, strict=True):
        assert cosine(a, b) > 0.9999
    assert got.fingerprint == expected.fingerprint
    assert [e.index for e in skipped.errors] == [2] and skipped.errors[0].detail
    assert skipped.ok.tolist() == [True, True, False, True]
    assert np.isnan(skipped.embeddings[2]).all()
    assert cosine(skipped.embeddings[3], expected.embeddings[2]) > 0.9999


def test_env_sets_the_default_split(
    limited_server: Server, five: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMPOOL_MAX_IMAGES_PER_REQUEST", "2")
    monkeypatch.setenv("SIMPOOL_MAX_REQUEST_BYTES", str(LIMITED_BYTES))
    monkeypatch.setenv("SIMPOOL_API_KEY", API_KEY)
    with SimPoolClient(limited_server.url) as client:
        assert client.max_images_per_request == 2
        assert len(client.embed(five)) == 5


def test_errors_carry_status_and_detail(limited_server: Server, five: list[Path]) -> None:
    with SimPoolClient(limited_server.url, api_key="") as client, pytest.raises(AuthenticationError) as e:
        client.embed(five[:1])
    assert e.value.status_code == 401 and e.value.detail
    with SimPoolClient(limited_server.url, api_key="wrong") as client, pytest.raises(AuthenticationError):
        client.models()
    with SimPoolClient(limited_server.url, api_key=API_KEY, max_images_per_request=10) as client:
        with pytest.raises(PayloadTooLargeError) as e:
            client.embed(five)
        assert e.value.status_code == 413 and e.value.detail
    with SimPoolClient(limited_server.url, api_key=API_KEY, max_images_per_request=2) as client:
        with pytest.raises(PayloadTooLargeError) as e:
            client.embed(five[2:4])  # two images, but too many bytes for one request
        assert e.value.status_code == 413 and "bytes" in e.value.detail
    with SimPoolClient(limited_server.url, api_key=API_KEY, max_request_bytes=LIMITED_BYTES) as client:
        assert len(client.embed(five[2:4])) == 2
        with pytest.raises(ModelNotFoundError) as e:
            client.embed(five[:1], model="no_such_model")
        assert e.value.status_code == 404 and "no_such_model" in e.value.detail
        with pytest.raises(BadRequestError) as e:
            client.embed([five[0], b"\x89PNG broken"])
        assert e.value.status_code == 400 and "1" in e.value.detail


def test_attention_classify_and_png(server: Server, five: list[Path]) -> None:
    with SimPoolClient(server.url) as client:
        att = client.attention(five[:3])
        cls = client.classify(five[:2], top_k=3)
        png = client.attention_png(five[0])
        vit = client.attention(five[:1], model="vit_tiny")
        whole = client.attention(five[:1], box_mass=1.0)
    h, w = att.grid
    assert att.attention.shape == (3, h, w) and att.fingerprint
    np.testing.assert_allclose(att.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert vit.model == "vit_tiny" and vit.fingerprint != att.fingerprint
    width, height = Image.open(five[0]).size
    for box in [*att.boxes, *whole.boxes]:
        assert box is not None and 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    # All the mass is the whole crop, which holds the box of any smaller share.
    (w0, w1), (a0, a1) = whole.boxes[0][:2], att.boxes[0][:2]  # type: ignore[index]
    assert len(att.boxes) == 3 and w0 <= a0 and w1 <= a1
    assert whole.boxes[0][2] >= att.boxes[0][2] and whole.boxes[0][3] >= att.boxes[0][3]  # type: ignore[index]
    assert len(cls.predictions) == 2
    for preds in cls.predictions:
        assert preds is not None and len(preds) == 3
        scores = [p.score for p in preds]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_async_client_matches_sync(server: Server, five: list[Path]) -> None:
    with SimPoolClient(server.url) as client:
        expected = client.embed(five)

    async def go() -> list:
        async with AsyncSimPoolClient(server.url, max_images_per_request=2, max_concurrency=2) as client:
            return await asyncio.gather(
                client.embed(five), client.embed(five[::-1]), client.classify(five[:1]), client.models()
            )

    forward, backward, cls, models = asyncio.run(go())
    for i in range(5):
        assert cosine(forward.embeddings[i], expected.embeddings[i]) > 0.9999
        assert cosine(backward.embeddings[4 - i], expected.embeddings[i]) > 0.9999
    assert forward.fingerprint == expected.fingerprint
    assert cls.predictions[0] and any(m.name == "vit_tiny" for m in models)


def test_client_never_imports_torch_timm_or_onnxruntime() -> None:
    code = (
        "import sys, simpool_serve.client, simpool_serve.client.embed_cli, simpool_serve.client.backends;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'onnxruntime'});"
        "sys.exit(str(bad) if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
