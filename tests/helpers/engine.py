"""The engine driven in the test's process: the one place tests build it, call it and name its refusals.

Engine-level unit tests go through `build_engine`, `engine_over` and `infer` only, so a change to how
the engine is configured or called is made here once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from simpool_serve.service.engine import Answer, Call, Engine, EngineConfig, Kind, LoadedModel
from simpool_serve.service.metrics import Metrics

T = TypeVar("T")

# Small and deterministic on any machine: one decode thread, one inference lane of one thread.
DEFAULTS: dict[str, Any] = {
    "providers": ["CPUExecutionProvider"],
    "max_batch_size": 4,
    "decode_workers": 1,
    "intra_op_threads": 1,
    "inference_lanes": 1,
}

# The refusals a client may retry: a model not serving (yet), and a full queue.
NOT_READY = Kind.NOT_READY
OVERLOADED = Kind.OVERLOADED


def build_engine(model_dir: Path, **limits: Any) -> Engine:
    """An engine over `model_dir`, not loaded yet; `limits` override `DEFAULTS` (max_queue, ...)."""
    config = EngineConfig(model_dir=model_dir, **{**DEFAULTS, **limits})
    return Engine.from_config(config, Metrics(config.max_batch_size))


@contextlib.asynccontextmanager
async def engine_over(model_dir: Path, **limits: Any) -> AsyncIterator[Engine]:
    """A loaded engine for the block (its batchers run on the current event loop); always closed."""
    engine = build_engine(model_dir, **limits)
    try:
        await engine.load()
        yield engine
    finally:
        await engine.close()


async def infer(
    engine: Engine,
    model: LoadedModel,
    *,
    images: Sequence[bytes] | None = None,
    pixels: np.ndarray | None = None,
    outputs: Collection[str] = (),
    on_error: str = "fail",
    deadline: float | None = None,
) -> Answer:
    """One request through `engine.run`: encoded `images` or ready `pixels`, by `deadline` (default:
    the engine's request timeout from now)."""
    deadline = engine.deadline() if deadline is None else deadline
    call = Call(images=images, pixels=pixels, outputs=outputs, on_error=on_error)  # type: ignore[arg-type]
    return await engine.run(model, call, deadline=deadline)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Runs a test's scenario on a fresh event loop, bounded so a hang fails instead of blocking."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
