"""The Open Inference Protocol's model repository extension, shared by its HTTP and gRPC doors.

The index is the engine's view of every model folder (`Engine.repository`). Loading and unloading
are the `explicit` model control mode's (SIMPOOL_MODEL_CONTROL); under `none` and `poll` the folders
decide what serves, so both are refused, as Triton refuses them in those modes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from simpool_serve.service.engine import Engine, EngineError, Kind
from simpool_serve.service.refusals import Refusal, forbidden


def index(engine: Engine, ready_only: bool = False) -> list[dict[str, Any]]:
    """`[{"name", "version", "state", "reason"}]` for every model folder (only READY ones if asked)."""
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        for e in engine.repository()
        if not ready_only or e.state == "READY"
    ]


_MODES = {
    "none": "every folder of the model directory is loaded at start",
    "poll": "the model directory's folders are loaded as they appear, change and go",
}


def control_refused(action: str, model: str, mode: str) -> Refusal:
    """Load or unload under the `none` or `poll` mode: not allowed (HTTP 403, gRPC PERMISSION_DENIED)."""
    shown = model if len(model) <= 100 else f"{model[:100]}..."
    return forbidden(
        f"cannot {action} model {shown!r}: the model control mode is {mode!r} ({_MODES.get(mode, mode)}); "
        "the repository API loads and unloads under SIMPOOL_MODEL_CONTROL=explicit"
    )


def _check(engine: Engine, action: str, model: str, parameters: Iterable[str]) -> None:
    mode = engine.config.model_control
    if mode != "explicit":
        raise control_refused(action, model, mode)
    overrides = sorted(p for p in parameters if p == "config" or p.startswith("file:"))
    if overrides:
        raise EngineError(
            Kind.INVALID,
            f"{action} parameters {overrides} are not supported: a model is its folder; write the folder "
            "(simpool-export), then load it",
            "malformed",
        )


async def load(engine: Engine, model: str, parameters: Iterable[str] = ()) -> None:
    """Loads or reloads `model` from its folder; returns once it serves (LOAD_FAILED says why not)."""
    _check(engine, "load", model, parameters)
    await engine.load_model(model)


async def unload(engine: Engine, model: str, parameters: Iterable[str] = ()) -> None:
    """Stops serving `model` once its requests in flight are answered (a model not served: nothing)."""
    _check(engine, "unload", model, parameters)
    await engine.unload_model(model)
