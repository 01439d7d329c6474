"""The door path: a new door is only its protocol's translation, and `serve` gives it the rest.

A stub door over a plain dict (the shape any protocol decodes into) runs on the real engine with a real
exported model: the path looks the model up, reports its labels once, runs the engine, times the
encoding, and lets the engine's errors out for the door's own mapping.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simpool_serve.service.door import Door, serve
from simpool_serve.service.engine import Answer, Call, Engine, EngineConfig, EngineError, Kind, LoadedModel
from simpool_serve.service.metrics import Metrics
from simpool_serve.spec import EMBEDDING


class DictDoor(Door[dict[str, Any], list[float]]):
    """A whole door: a dict request in, one embedding norm per image out."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request

    async def read(self, engine: Engine, deadline: float) -> dict[str, Any]:
        request = self.request
        engine.limits.check_images(len(request["images"]))
        return request

    def model_name(self, req: dict[str, Any]) -> str | None:
        return req.get("model")

    def call(self, req: dict[str, Any], model: LoadedModel) -> Call:
        return Call(images=req["images"], outputs=(EMBEDDING,), on_error=req.get("on_error", "fail"))

    def encode(self, req: dict[str, Any], model: LoadedModel, result: Answer) -> list[float]:
        return [float(np.linalg.norm(o[EMBEDDING])) if o else -1.0 for o in result.outputs]


def test_a_new_door_needs_under_40_lines() -> None:
    lines = [line for line in inspect.getsource(DictDoor).splitlines() if line.strip()]
    assert len(lines) < 40, len(lines)


def _engine(model_repo: Path) -> Engine:
    config = EngineConfig(model_dir=model_repo, max_batch_size=2, providers=["CPUExecutionProvider"])
    return Engine.from_config(config, Metrics(2))


def test_stub_door_runs_on_the_engine(model_repo: Path, photos: dict[str, Path]) -> None:
    images = [photos["astronaut.jpg"].read_bytes(), b"not an image", photos["coffee.jpg"].read_bytes()]
    labels: list[tuple[str, int]] = []

    async def scenario() -> None:
        engine = _engine(model_repo)
        await engine.load()
        fingerprint = engine.model(None).fingerprint
        try:
            norms = await serve(
                engine, DictDoor({"images": images, "on_error": "skip"}), label=lambda *a: labels.append(a)
            )
            assert norms[1] == -1.0 and min(norms[0], norms[2]) > 0
            assert labels == [(engine.default, 3, fingerprint)]  # once: the model, its images, fingerprint
            encoded = engine.metrics.stage_duration.labels(engine.default, "encode")
            assert encoded._sum.get() > 0  # the path timed the door's encoding

            labels.clear()
            with pytest.raises(EngineError) as err:  # the engine's error, for the door to map
                await serve(engine, DictDoor({"images": images}), label=lambda *a: labels.append(a))
            assert err.value.kind is Kind.BAD_IMAGE and "image 1" in err.value.detail
            assert labels == [(engine.default, 3, fingerprint)]
            with pytest.raises(EngineError) as err:
                await serve(engine, DictDoor({"images": images, "model": "nope"}), label=print)
            assert err.value.kind is Kind.NOT_FOUND
        finally:
            await engine.close()

    asyncio.run(scenario())
