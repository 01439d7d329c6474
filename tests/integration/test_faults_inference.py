"""A graph that raises inside a batch: only that batch's requests fail (500 with a reason), the failure
is counted, the next batch answers, and /readyz turns 503 while a model keeps failing.

The fault is injected by wrapping the real OnnxRunner (the factory the app takes): the server, the
batcher and the sessions are the production ones.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from simpool_serve.service.app import create_app
from simpool_serve.service.engine.providers import ProviderOptions
from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.service.settings import Settings
from tests.helpers.inprocess import serve_in_thread

FAILING_AFTER = 3


class Switch:
    """How many of the next batches fail (over every session of the model), and the sizes that did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.remaining = 0
        self.failed_sizes: list[int] = []

    def arm(self, batches: int) -> None:
        with self.lock:
            self.remaining = batches
            self.failed_sizes.clear()


class FailOnDemand:
    """A real OnnxRunner whose batches raise while the switch is armed, as a lost device would."""

    def __init__(self, inner: OnnxRunner, switch: Switch) -> None:
        self.inner = inner
        self.switch = switch
        self.provider = inner.provider
        self.input_size = inner.input_size
        self.output_names = inner.output_names

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self.switch.lock:
            if self.switch.remaining > 0:
                self.switch.remaining -= 1
                self.switch.failed_sizes.append(len(images))
                raise RuntimeError("injected fault: the device was lost\nsecond line of detail")
        return self.inner.run(images)


@pytest.fixture(scope="module")
def faulty(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Switch]]:
    repo = tmp_path_factory.mktemp("faulty-repo")
    shutil.copytree(model_repo / "resnet18", repo / "resnet18")
    switch = Switch()

    def factory(
        path: Path, providers: list[str] | None, threads: int, spinning: bool, options: ProviderOptions | None
    ) -> FailOnDemand:
        return FailOnDemand(OnnxRunner(path, providers, threads, spinning, options), switch)

    settings = Settings(
        model_dir=repo,
        providers=["CPUExecutionProvider"],
        unready_after_failed_batches=FAILING_AFTER,
        max_batch_delay_ms=50,  # concurrent requests share batches
    )
    with serve_in_thread(create_app(settings, runner_factory=factory)) as url:
        yield url, switch


def failures(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    line = r'^simpool_failures_total\{model="resnet18",reason="inference_error"\} (\S+)$'
    found = re.search(line, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_failing_batch_fails_only_its_requests(faulty: tuple[str, Switch], photos: dict[str, Path]) -> None:
    url, switch = faulty
    body = {"images": [base64.b64encode(photos["coffee.jpg"].read_bytes()).decode()]}
    with httpx.Client(base_url=url, timeout=60) as client:
        before = failures(client)
        switch.arm(1)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
                return list(await asyncio.gather(*(ac.post("/embed", json=body) for _ in range(8))))

        answers = asyncio.run(burst())
        codes = sorted(a.status_code for a in answers)
        # One image per request: the failed batch held exactly that many requests, and only they failed.
        assert len(switch.failed_sizes) == 1
        failed = switch.failed_sizes[0]
        assert codes == [200] * (8 - failed) + [500] * failed, codes
        for a in answers:
            if a.status_code == 500:
                detail = a.json()["detail"]
                assert "inference failed on model 'resnet18'" in detail
                assert "RuntimeError: injected fault: the device was lost" in detail
                assert "second line" not in detail and "server log" in detail
            else:
                assert len(a.json()["embeddings"]) == 1
        assert failures(client) == before + failed
        # The next batch answers, and one failure does not make the model unready.
        assert client.post("/embed", json=body).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_readyz_reflects_a_model_that_keeps_failing(
    faulty: tuple[str, Switch], photos: dict[str, Path]
) -> None:
    url, switch = faulty
    body = {"images": [base64.b64encode(photos["chelsea.jpg"].read_bytes()).decode()]}
    with httpx.Client(base_url=url, timeout=60) as client:
        switch.arm(FAILING_AFTER)
        for i in range(FAILING_AFTER):  # one request at a time: one batch each
            assert client.get("/readyz").status_code == 200, f"unready after {i} failed batches"
            assert client.post("/embed", json=body).status_code == 500
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        detail = ready.json()["detail"]
        assert f"model 'resnet18' is failing: its last {FAILING_AFTER} batches failed" in detail
        assert "RuntimeError: injected fault" in detail
        v2 = client.get("/v2/health/ready")
        assert v2.status_code == 503 and "is failing" in v2.json()["error"]
        # Still served (only a success can make it ready again): the next batch answers, and it is ready.
        assert client.post("/embed", json=body).status_code == 200
        assert client.get("/readyz").status_code == 200
