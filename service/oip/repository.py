"""The Open Inference Protocol's model repository extension, shared by its HTTP and gRPC doors.

The index is the engine's view of every model folder (`Engine.repository`). Loading and unloading
belong to a model control mode that allows them; this server loads the folders it finds at start
(Triton's `--model-control-mode=none`), so both are refused, as Triton refuses them in that mode.
"""

from __future__ import annotations

from typing import Any

from simpool_serve.service.engine import Engine
from simpool_serve.service.refusals import Refusal, forbidden


def index(engine: Engine, ready_only: bool = False) -> list[dict[str, Any]]:
    """`[{"name", "version", "state", "reason"}]` for every model folder (only READY ones if asked)."""
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        for e in engine.repository()
        if not ready_only or e.state == "READY"
    ]


def control_refused(action: str, model: str) -> Refusal:
    """Load or unload under the `none` model control mode: not allowed (HTTP 403, gRPC PERMISSION_DENIED)."""
    shown = model if len(model) <= 100 else f"{model[:100]}..."
    return forbidden(
        f"cannot {action} model {shown!r}: the model control mode is 'none' (every folder of the model "
        "directory is loaded at start); explicit model control is not enabled"
    )
