"""The runner and the batcher on a real exported graph (resnet18, random init) and real photographs."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from simpool_serve.service.engine import Engine
from simpool_serve.service.engine.batcher import Batcher
from simpool_serve.service.engine.errors import EngineError
from simpool_serve.service.engine.preprocess import decode_image
from simpool_serve.service.engine.runner import OnnxRunner, ProviderError
from simpool_serve.service.http_status import headers_of, status_of
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.settings import Settings
from simpool_serve.spec import Manifest, load_manifest
from tests.helpers import cosine


@pytest.fixture(scope="module")
def resnet(model_repo: Path) -> tuple[OnnxRunner, Manifest]:
    folder = model_repo / "resnet18"
    return OnnxRunner(folder / "model.onnx", ["CPUExecutionProvider"], 2), load_manifest(
        folder / "manifest.json"
    )


@pytest.fixture(scope="module")
def pixels(resnet: tuple[OnnxRunner, Manifest], photos: dict[str, Path]) -> list[np.ndarray]:
    _, manifest = resnet
    return [decode_image(p.read_bytes(), manifest, 10**8) for p in photos.values()]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_runner_outputs(resnet: tuple[OnnxRunner, Manifest], pixels: list[np.ndarray]) -> None:
    runner, manifest = resnet
    assert runner.provider == "CPUExecutionProvider"
    out = runner.run(np.stack(pixels[:3]))
    assert out["embedding"].shape == (3, manifest.embedding_dim)
    assert out["attention"].shape == (3, *manifest.grid)
    np.testing.assert_allclose(out["attention"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert out["logits"].shape == (3, manifest.num_classes)


def test_unavailable_provider_is_refused(model_repo: Path) -> None:
    with pytest.raises(ProviderError, match="NoSuchExecutionProvider"):
        OnnxRunner(model_repo / "resnet18" / "model.onnx", ["NoSuchExecutionProvider"], 1)


def test_jpeg_draft_keeps_the_answer(resnet: tuple[OnnxRunner, Manifest], photos: dict[str, Path]) -> None:
    """Draft decoding of large JPEGs (upright and sideways) stays within cosine 0.9999 of the plain path."""
    runner, manifest = resnet
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        img = Image.open(photos[name]).convert("RGB")
        big = img.resize((img.width * 5, img.height * 5), Image.Resampling.BICUBIC)
        for orientation in (1, 6):
            exif = Image.Exif()
            exif[0x0112] = orientation
            stored = big.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else big
            buf = io.BytesIO()
            stored.save(buf, "JPEG", quality=90, exif=exif)
            data = buf.getvalue()
            plain = decode_image(data, manifest, 10**9, draft=False)
            draft = decode_image(data, manifest, 10**9, draft=True)
            assert not np.array_equal(plain, draft)  # the draft path was taken
            emb = runner.run(np.stack([plain, draft]))["embedding"]
            assert cosine(emb[0], emb[1]) >= 0.9999, (name, orientation, cosine(emb[0], emb[1]))


def make_batcher(runner: OnnxRunner, metrics: Metrics, pool: ThreadPoolExecutor, **kw: Any) -> Batcher:
    opts = {"max_batch_size": 4, "max_delay_s": 0.01, "max_queue": 64, **kw}
    return Batcher("resnet18", runner.run, pool, metrics=metrics, **opts)


def test_batches_route_answers_by_position(
    resnet: tuple[OnnxRunner, Manifest], pixels: list[np.ndarray]
) -> None:
    """9 images in 5 requests run as batches of 4, 4 and 1; every answer equals its image's solo answer."""
    runner, _ = resnet
    solo = [runner.run(p[None])["embedding"][0] for p in pixels]
    sizes = [1, 3, 2, 1, 2]
    order = [i % len(pixels) for i in range(sum(sizes))]

    async def scenario() -> tuple[list[list[Any]], Metrics]:
        metrics = Metrics(4)
        with ThreadPoolExecutor(1) as pool:
            batcher = make_batcher(runner, metrics, pool)
            batcher.start()
            jobs, start = [], 0
            for n in sizes:
                idx = order[start : start + n]
                start += n
                batcher.reserve(n)
                jobs.append((idx, batcher.submit([pixels[i] for i in idx])))
            results = [(idx, await job.future) for idx, job in jobs]
            await batcher.close()
        return results, metrics

    results, metrics = run(scenario())
    for idx, outs in results:
        for i, out in zip(idx, outs, strict=True):
            np.testing.assert_allclose(out["embedding"], solo[i], atol=1e-5)
    assert sample(metrics, "simpool_batch_size_count", model="resnet18") == 3
    assert sample(metrics, "simpool_batch_size_sum", model="resnet18") == 9
    assert sample(metrics, "simpool_queue_depth", model="resnet18") == 0


def test_lone_request_does_not_wait_for_the_window(
    resnet: tuple[OnnxRunner, Manifest], pixels: list[np.ndarray]
) -> None:
    """With an hour-long window, a request at an idle model still runs at once (else: timeout)."""
    runner, _ = resnet

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = make_batcher(runner, Metrics(4), pool, max_delay_s=3600.0)
            batcher.start()
            for p in pixels[:3]:  # one after another: each finds the model idle
                batcher.reserve(1)
                out = await asyncio.wait_for(batcher.submit([p]).future, 30)
                assert out[0] is not None
            await batcher.close()

    run(scenario())


def test_lanes_run_batches_at_once_and_an_idle_batch_on_every_thread(
    resnet: tuple[OnnxRunner, Manifest], model_repo: Path, pixels: list[np.ndarray]
) -> None:
    """A request at an idle model runs on the all-thread session; a backlog runs on two lanes at once
    (one single-thread session called from two threads). Every answer matches its image's solo answer."""
    wide, _ = resnet
    narrow = OnnxRunner(model_repo / "resnet18" / "model.onnx", ["CPUExecutionProvider"], 1)
    solo = [wide.run(p[None])["embedding"][0] for p in pixels]
    calls = {"wide": 0, "lane": 0}
    active, peak = 0, 0
    lock = threading.Lock()

    def on_all_threads(batch: np.ndarray) -> dict[str, np.ndarray]:
        calls["wide"] += 1
        return wide.run(batch)

    def on_a_lane(batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal active, peak
        with lock:
            calls["lane"] += 1
            active += 1
            peak = max(peak, active)
        try:
            return narrow.run(batch)
        finally:
            with lock:
                active -= 1

    order = [i % len(pixels) for i in range(24)]

    async def scenario() -> tuple[list[Any], list[Any]]:
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(
                "resnet18",
                on_all_threads,
                pool,
                max_batch_size=4,
                max_delay_s=0.01,
                max_queue=64,
                metrics=Metrics(4),
                lane_run=on_a_lane,
                lanes=2,
            )
            batcher.start()
            batcher.reserve(1)
            lone = await batcher.submit([pixels[0]]).future
            assert calls == {"wide": 1, "lane": 0}
            jobs = []
            for i in order:
                batcher.reserve(1)
                jobs.append(batcher.submit([pixels[i]]))
            backlog = [(await job.future)[0] for job in jobs]
            await batcher.close()
        return lone, backlog

    lone, backlog = run(scenario())
    np.testing.assert_allclose(lone[0]["embedding"], solo[0], atol=1e-5)
    assert peak == 2 and calls["lane"] >= 2
    for i, out in zip(order, backlog, strict=True):
        assert cosine(out["embedding"], solo[i]) > 0.99999


def test_failing_batch_fails_only_its_requests(
    resnet: tuple[OnnxRunner, Manifest], pixels: list[np.ndarray]
) -> None:
    """A batch onnxruntime rejects fails its requests with a generic 500; the next batches still run."""
    runner, _ = resnet
    wrong = np.zeros((100, 100, 4), np.uint8)  # four channels, not the graph's RGB: onnxruntime raises

    async def scenario() -> None:
        metrics = Metrics(1)
        with ThreadPoolExecutor(1) as pool:
            batcher = make_batcher(runner, metrics, pool, max_batch_size=1)
            batcher.start()
            batcher.reserve(3)
            good1, bad, good2 = (batcher.submit([p]) for p in (pixels[0], wrong, pixels[1]))
            assert (await good1.future)[0] is not None
            with pytest.raises(EngineError) as exc:
                await bad.future
            assert status_of(exc.value) == 500 and "server log" in exc.value.detail
            assert (await good2.future)[0] is not None
            assert batcher.alive
            await batcher.close()

    run(scenario())


def test_cancel_drops_queued_images_and_queue_is_bounded(
    resnet: tuple[OnnxRunner, Manifest], pixels: list[np.ndarray]
) -> None:
    runner, _ = resnet

    async def scenario() -> Metrics:
        metrics = Metrics(1)
        with ThreadPoolExecutor(1) as pool:
            batcher = make_batcher(runner, metrics, pool, max_batch_size=1, max_queue=6)
            batcher.start()
            batcher.reserve(1)
            first = batcher.submit([pixels[0]])
            batcher.reserve(5)
            with pytest.raises(EngineError) as exc:  # 6 of 6 places taken
                batcher.reserve(1)
            assert status_of(exc.value) == 503 and headers_of(exc.value)["Retry-After"] == "1"
            doomed = batcher.submit(pixels[:5])
            assert batcher.cancel(doomed) == 5  # none of them had reached a batch
            doomed.future.cancel()
            batcher.reserve(1)  # room again
            batcher.release(1)
            await first.future
            await batcher.close()
            assert not batcher.alive
        return metrics

    metrics = run(scenario())
    assert sample(metrics, "simpool_batch_size_count", model="resnet18") == 1


def test_close_answers_everything_queued(
    resnet: tuple[OnnxRunner, Manifest], pixels: list[np.ndarray]
) -> None:
    runner, _ = resnet

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = make_batcher(runner, Metrics(2), pool, max_batch_size=2)
            batcher.start()
            batcher.reserve(len(pixels))
            jobs = [batcher.submit([p]) for p in pixels]
            await batcher.close()
            assert all(j.future.done() and j.future.result()[0] is not None for j in jobs)
            with pytest.raises(EngineError) as exc:
                batcher.reserve(1)
            assert status_of(exc.value) == 503

    run(scenario())


def test_readiness_follows_the_batchers(model_repo: Path) -> None:
    """Models load one by one and warm up; if a batcher task ever dies, the service reports not ready."""
    settings = Settings(model_dir=model_repo, max_batch_size=2, providers=["CPUExecutionProvider"])

    async def scenario() -> None:
        engine = Engine.from_config(settings.engine_config(), Metrics(settings.max_batch_size))
        assert engine.not_ready_reason() == "models are loading"
        with pytest.raises(EngineError) as exc:  # a request before the model is loaded
            engine.model("resnet18")
        assert status_of(exc.value) == 503 and "Retry-After" in headers_of(exc.value)
        await engine.load()
        assert engine.not_ready_reason() is None
        task = engine.models["vit_tiny"].batcher._task  # the model's loop, killed from outside
        assert task is not None
        task.cancel()
        await asyncio.sleep(0.05)
        assert "vit_tiny" in (engine.not_ready_reason() or "")
        with pytest.raises(EngineError) as exc:
            engine.models["vit_tiny"].batcher.reserve(1)
        assert status_of(exc.value) == 503
        await engine.close()

    run(scenario())
