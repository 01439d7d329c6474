"""The engine built in the test's process over a model folder: the one place tests construct it.

Engine-level unit tests go through `engine_over` only, so a change to how the engine is configured
(its constructor, its configuration object) is made here once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from simpool_serve.service.engine import Engine
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.settings import Settings

T = TypeVar("T")

# Small and deterministic on any machine: one decode thread, one inference lane of one thread.
DEFAULTS: dict[str, Any] = {
    "providers": ["CPUExecutionProvider"],
    "max_batch_size": 4,
    "decode_workers": 1,
    "intra_op_threads": 1,
    "inference_lanes": 1,
}


def build_engine(model_dir: Path, **limits: Any) -> Engine:
    """An engine over `model_dir`, not loaded yet; `limits` override `DEFAULTS` (max_queue, ...)."""
    settings = Settings(model_dir=model_dir, **{**DEFAULTS, **limits})
    return Engine.from_settings(settings, Metrics(settings.resolved_max_batch_size("CPUExecutionProvider")))


@contextlib.asynccontextmanager
async def engine_over(model_dir: Path, **limits: Any) -> AsyncIterator[Engine]:
    """A loaded engine for the block (its batchers run on the current event loop); always closed."""
    engine = build_engine(model_dir, **limits)
    try:
        await engine.load()
        yield engine
    finally:
        await engine.close()


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Runs a test's scenario on a fresh event loop, bounded so a hang fails instead of blocking."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
