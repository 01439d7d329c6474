"""The HTTP API of a real `simpool-serve` process on loopback (the shared `server` fixture)."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.spec import fingerprint, load_manifest
from tests.helpers import BIN, Server
from tests.unit.test_service_stages import png_bomb


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def metric_values(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_probes_models_and_docs(server: Server, model_repo: Path) -> None:
    with server.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json() == {"status": "ready"}
        listing = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert set(listing) == {"resnet18", "vit_tiny"}
        for name, m in listing.items():
            manifest = load_manifest(model_repo / name / "manifest.json")
            assert m["fingerprint"] == fingerprint(manifest)
            assert m["provider"] == "CPUExecutionProvider"
            assert m["default"] is (name == "resnet18")
            assert m["max_batch_size"] == 4  # the CPU default
            assert m["embedding_dim"] == manifest.embedding_dim and m["labels"] == manifest.labels
        spec = c.get("/openapi.json").json()
        for path in ("/embed", "/attention", "/classify"):
            op = spec["paths"][path]["post"]
            assert set(op["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
            assert {"400", "401", "404", "413", "415", "422", "503", "504"} <= set(op["responses"])
            assert "images" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert {"/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
        assert c.get("/docs").status_code == 200


def offline(model_repo: Path, name: str, paths: list[Path]) -> dict[str, np.ndarray]:
    """The same answer computed in this process: service preprocessing + onnxruntime, no HTTP."""
    folder = model_repo / name
    manifest = load_manifest(folder / "manifest.json")
    runner = OnnxRunner(folder / "model.onnx", ["CPUExecutionProvider"], 1)
    return runner.run(np.stack([decode_image(p.read_bytes(), manifest, 10**8) for p in paths]))


def test_embed_every_input_form_gives_the_offline_answer(
    server: Server, model_repo: Path, photos: dict[str, Path]
) -> None:
    paths = [photos["astronaut.jpg"], photos["camera.png"], photos["coffee.webp"]]
    want = offline(model_repo, "resnet18", paths)["embedding"]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    with server.client() as c:
        as_json = c.post("/embed", json={"images": [b64(p) for p in paths]}).json()
        as_uri = c.post("/embed", json={"images": [f"data:image/jpeg;base64,{b64(p)}" for p in paths]}).json()
        as_form = c.post("/embed", files=[("images", (p.name, p.read_bytes())) for p in paths]).json()
    for answer in (as_json, as_uri, as_form):
        assert answer["model"] == "resnet18" and answer["dim"] == 512 and answer["normalized"] is True
        assert answer["fingerprint"] == fingerprint(load_manifest(model_repo / "resnet18" / "manifest.json"))
        assert "errors" not in answer
        np.testing.assert_allclose(np.array(answer["embeddings"]), want, atol=1e-5)


def test_embed_options(server: Server, model_repo: Path, photos: dict[str, Path]) -> None:
    path = photos["chelsea.jpg"]
    raw = offline(model_repo, "vit_tiny", [path])["embedding"][0]
    with server.client() as c:
        plain = c.post(
            "/embed", files={"images": path.read_bytes()}, data={"model": "vit_tiny", "normalize": "false"}
        ).json()
        packed = c.post(
            "/embed", json={"images": [b64(path)], "model": "vit_tiny", "encoding": "base64"}
        ).json()
    assert plain["normalized"] is False and plain["dim"] == 192
    np.testing.assert_allclose(plain["embeddings"][0], raw, rtol=1e-4, atol=1e-5)
    vec = np.frombuffer(base64.b64decode(packed["embeddings"][0]), dtype="<f4")
    np.testing.assert_allclose(vec, raw / np.linalg.norm(raw), atol=1e-6)


def test_attention_json_and_png(server: Server, model_repo: Path, photos: dict[str, Path]) -> None:
    path = photos["rocket.jpg"]
    with server.client() as c:
        answer = c.post("/attention", json={"images": [b64(path), b64(path)], "model": "vit_tiny"}).json()
        png = c.post("/attention?format=png", files={"images": path.read_bytes()})
        too_many = c.post("/attention?format=png", files=[("images", path.read_bytes())] * 2)
        bad = c.post("/attention?format=png", files={"images": b"junk"}, data={"on_error": "skip"})
    grid = load_manifest(model_repo / "vit_tiny" / "manifest.json").grid
    assert answer["grid"] == list(grid)
    maps = np.array(answer["attention"])
    assert maps.shape == (2, *grid)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(maps[0], offline(model_repo, "vit_tiny", [path])["attention"][0], atol=1e-6)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == Image.open(path).size
    assert too_many.status_code == 422
    assert bad.status_code == 400 and bad.json()["detail"].startswith("image 0:")  # no PNG without its image


def test_classify(server: Server, model_repo: Path, photos: dict[str, Path]) -> None:
    path = photos["astronaut.jpg"]
    logits = offline(model_repo, "resnet18", [path])["logits"][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    labels = load_manifest(model_repo / "resnet18" / "manifest.json").labels
    with server.client() as c:
        answer = c.post("/classify", files={"images": path.read_bytes()}, data={"top_k": "3"}).json()
        no_head = c.post("/classify", json={"images": [b64(path)], "model": "vit_tiny"})
    preds = answer["predictions"][0]
    assert [p["index"] for p in preds] == list(np.argsort(-probs)[:3])
    for p in preds:
        assert p["score"] == pytest.approx(probs[p["index"]], rel=1e-4)
        assert p["label"] == (labels[p["index"]] if labels else str(p["index"]))
    assert no_head.status_code == 422 and "classifier" in no_head.json()["detail"]


def test_on_error_fail_and_skip(server: Server, photos: dict[str, Path]) -> None:
    good = b64(photos["coffee.jpg"])
    images = [good, base64.b64encode(b"definitely not an image").decode(), good, "%%%not-base64%%%"]
    with server.client() as c:
        failed = c.post("/embed", json={"images": images})
        skipped = c.post("/embed", json={"images": images, "on_error": "skip"})
        classified = c.post("/classify", json={"images": images, "on_error": "skip", "top_k": 1})
    assert failed.status_code == 400 and failed.json()["detail"].startswith("image 1:")
    body = skipped.json()
    assert skipped.status_code == 200
    assert body["embeddings"][1] is None and body["embeddings"][3] is None
    assert body["embeddings"][0] == body["embeddings"][2]
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert "base64" in body["errors"][1]["detail"]
    assert classified.json()["predictions"][1] is None and len(classified.json()["predictions"][0]) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"json": {"images": ["AAAA"], "model": "nope"}}, 404, "nope"),
        ({"content": b"images=abc", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
        ({"content": b"", "headers": {}}, 415, "none"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "json"),
        ({"json": {"model": "resnet18"}}, 422, "images"),
        ({"json": {"images": []}}, 422, "images"),
        ({"json": {"images": [1, 2]}}, 422, "images.0"),
        ({"json": {"images": ["AAAA"], "normalize": "maybe"}}, 422, "normalize"),
        ({"json": {"images": ["AAAA"], "on_error": "ignore"}}, 422, "on_error"),
        ({"json": {"images": ["AAAA"], "normalize": "yes"}}, 422, "normalize"),
        ({"json": {"images": ["AAAA"], "normalize": 1}}, 422, "normalize"),
        ({"json": {"images": ["AAAA"], "model": ""}}, 422, "model"),
        ({"files": {"images": b"AAAA"}, "data": {"model": ""}}, 422, "model"),
        ({"json": {"images": ["AAAA"] * 65}}, 413, "65 images"),
        ({"files": {"model": (None, "resnet18")}}, 422, "images"),
        ({"json": {"images": [base64.b64encode(b"GIF89a junk").decode()]}}, 400, "image 0"),
        ({"json": {"images": ["AAAA", "not base64!"]}}, 400, "image 0"),
    ],
)
def test_errors_are_json_with_a_detail(server: Server, kwargs: dict, status: int, needle: str) -> None:
    with server.client() as c:
        r = c.post("/embed", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert needle.lower() in r.json()["detail"].lower()


def test_other_errors_are_json_too(server: Server, photos: dict[str, Path]) -> None:
    with server.client() as c:
        cases = [
            (c.post("/classify", json={"images": [b64(photos["coffee.jpg"])], "top_k": 0}), 422),
            (c.post("/attention?format=gif", json={"images": [b64(photos["coffee.jpg"])]}), 422),
            (c.get("/nowhere"), 404),
            (c.get("/embed"), 405),
            (c.post("/embed", files={"images": png_bomb(9000, 9000)}), 413),
        ]
    for r, status in cases:
        assert r.status_code == status, r.text
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert "pixels" in cases[-1][0].json()["detail"] and "image 0" in cases[-1][0].json()["detail"]


def test_batch_invariance_under_concurrent_traffic(
    server: Server, model_repo: Path, photos: dict[str, Path]
) -> None:
    """Mixed concurrent requests share batches, yet each image gets its solo answer (within 1e-5)."""
    paths = list(photos.values())
    with server.client() as c:
        solo = {
            (model, p.name): np.array(
                c.post("/embed", files={"images": p.read_bytes()}, data={"model": model}).json()[
                    "embeddings"
                ][0]
            )
            for model in ("resnet18", "vit_tiny")
            for p in paths
        }
        before = metric_values(c)
    rng = random.Random(0)
    plan = [(rng.choice(["resnet18", "vit_tiny"]), rng.sample(paths, rng.randint(1, 3))) for _ in range(40)]

    def call(item: tuple[str, list[Path]]) -> list[list[float]]:
        model, chosen = item
        with server.client() as c:
            r = c.post("/embed", json={"images": [b64(p) for p in chosen], "model": model})
            assert r.status_code == 200, r.text
            return r.json()["embeddings"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, plan))
    for (model, chosen), embs in zip(plan, answers, strict=True):
        for p, e in zip(chosen, embs, strict=True):
            np.testing.assert_allclose(e, solo[(model, p.name)], atol=1e-5)
    with server.client() as c:
        after = metric_values(c)
    batches = sum(
        value(after, "simpool_batch_size_count", model=m) - value(before, "simpool_batch_size_count", model=m)
        for m in ("resnet18", "vit_tiny")
    )
    images = sum(len(chosen) for _, chosen in plan)
    assert batches < images  # some batches held several requests' images


def test_metrics_count_exactly(server: Server, photos: dict[str, Path]) -> None:
    good = {"images": photos["coffee.jpg"].read_bytes()}
    with server.client() as c:
        before = metric_values(c)
        for _ in range(3):
            assert c.post("/embed", files=good).status_code == 200
        assert c.post("/classify", files=good, data={"model": "resnet18"}).status_code == 200
        assert c.post("/embed", files=good, data={"model": "ghost"}).status_code == 404
        assert c.post("/embed", files={"images": b"junk"}).status_code == 400
        assert (
            c.post("/embed", json={"images": [b64(photos["coffee.jpg"])] * 2, "on_error": "skip"}).status_code
            == 200
        )
        after = metric_values(c)
    delta = {
        k: after[k] - before.get(k, 0.0)
        for k in after
        if k[0]
        in (
            "simpool_requests_total",
            "simpool_images_total",
            "simpool_failures_total",
            "simpool_batch_size_sum",
        )
        and after[k] != before.get(k, 0.0)
    }

    def d(name: str, **labels: str) -> float:
        return delta.pop((name, frozenset(labels.items())), 0.0)

    assert d("simpool_requests_total", endpoint="/embed", model="resnet18", code="200", key="none") == 4
    assert d("simpool_requests_total", endpoint="/classify", model="resnet18", code="200", key="none") == 1
    assert d("simpool_requests_total", endpoint="/embed", model="", code="404", key="none") == 1
    assert d("simpool_requests_total", endpoint="/embed", model="resnet18", code="400", key="none") == 1
    # The first scrape:
    assert d("simpool_requests_total", endpoint="/metrics", model="", code="200", key="none") == 1
    assert d("simpool_images_total", model="resnet18") == 6
    assert d("simpool_batch_size_sum", model="resnet18") == 6
    assert d("simpool_failures_total", model="", reason="unknown_model") == 1
    assert d("simpool_failures_total", model="resnet18", reason="bad_image") == 1
    assert delta == {}, delta


def test_one_log_line_per_request(server: Server, photos: dict[str, Path]) -> None:
    with server.client() as c:
        c.post(
            "/embed", files=[("images", photos["coffee.jpg"].read_bytes())] * 3, data={"model": "vit_tiny"}
        )
    lines = [json.loads(line) for line in server.read_log().splitlines() if line.startswith("{")]
    requests = [e for e in lines if e.get("msg") == "request" and e.get("endpoint") == "/embed"]
    last = requests[-1]
    assert last["model"] == "vit_tiny" and last["images"] == 3 and last["status"] == 200
    assert last["duration_ms"] > 0 and last["method"] == "POST"


def test_json_fields_take_their_json_type_only(server: Server, photos: dict[str, Path]) -> None:
    """In JSON, `"top_k": true` is not 1 nor `"normalize": "false"` false (422 naming the field); form
    fields are text, so there `top_k=2` and `normalize=false` still convert."""
    path = photos["coffee.jpg"]
    with server.client() as c:
        wrong = [c.post("/classify", json={"images": [b64(path)], "top_k": k}) for k in (True, "2", 2.0)]
        wrong.append(c.post("/embed", json={"images": [b64(path)], "normalize": "false"}))
        as_json = c.post("/classify", json={"images": [b64(path)], "top_k": 2, "model": None})
        form = c.post("/classify", files={"images": path.read_bytes()}, data={"top_k": "2"})
        form_raw = c.post("/embed", files={"images": path.read_bytes()}, data={"normalize": "false"})
    for r, field in zip(wrong, ["top_k"] * 3 + ["normalize"], strict=True):
        assert r.status_code == 422 and r.json()["detail"].startswith(field), r.text
    assert as_json.status_code == 200 and len(as_json.json()["predictions"][0]) == 2
    assert [p["index"] for p in form.json()["predictions"][0]] == [
        p["index"] for p in as_json.json()["predictions"][0]
    ]
    assert form_raw.json()["normalized"] is False


def test_trailing_slash_is_a_404_not_a_redirect(server: Server, photos: dict[str, Path]) -> None:
    """A 307 to `/embed` would make a client send its (up to 100 MB) body twice."""
    with server.client() as c:
        before = metric_values(c)
        embed = c.post("/embed/", json={"images": [b64(photos["coffee.jpg"])]})
        probe = c.get("/healthz/")
        after = metric_values(c)
        assert all(c.get(p).status_code == 200 for p in ("/docs", "/openapi.json", "/metrics", "/healthz"))
    for r in (embed, probe):
        assert r.status_code == 404 and "location" not in r.headers and r.json()["detail"], r.text
    labels = {"endpoint": "other", "model": "", "code": "404", "key": "none"}
    name = "simpool_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 2


def test_probes_answer_head(server: Server) -> None:
    """Load balancers probe with HEAD: the same status and headers as GET, no body."""
    with server.client() as c:
        for path in ("/healthz", "/readyz"):
            get, head = c.get(path), c.head(path)
            assert head.status_code == get.status_code == 200 and head.content == b""
            assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
            assert head.headers["content-length"] == get.headers["content-length"]


def test_openapi_error_descriptions_match_the_answers(server: Server, photos: dict[str, Path]) -> None:
    with server.client() as c:
        spec = c.get("/openapi.json").json()
        no_head = c.post("/classify", json={"images": [b64(photos["coffee.jpg"])], "model": "vit_tiny"})
    responses = spec["paths"]["/classify"]["post"]["responses"]
    assert no_head.status_code == 422 and "classifier" in responses["422"]["description"]
    assert "decoded" in responses["400"]["description"] and "model" not in responses["400"]["description"]
    assert "head" not in spec["paths"]["/healthz"]  # HEAD is answered, not listed twice


def test_a_missing_provider_exits_3_as_documented(model_repo: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env["SIMPOOL_PROVIDERS"] = "NoSuchExecutionProvider"
    cmd = [str(BIN / "simpool-serve"), "--model-dir", str(model_repo), "--host", "127.0.0.1", "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 3 and "NoSuchExecutionProvider" in done.stderr
    docs = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    providers = next(p for p in docs.split("\n\n") if p.startswith("Providers:"))
    assert "exit with code 3" in " ".join(providers.split())
