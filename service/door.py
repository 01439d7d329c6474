"""The one path every door takes: deadline → read → model (leased) → call → run → encode.

A door translates one protocol onto the engine, as LitServe's decode → predict → encode hooks do: it
fills in the hooks of `Door` and `serve` runs them in this fixed order. So every door, whatever its
wire format, gets the same deadline (it starts before the body is read), the same model lookup, the
same labels for the request's metrics and log line (reported once, through `label`), and the same
timed encoding. Nothing here knows a protocol: HTTP's glue is `service/http_door.py`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from simpool_serve.service.engine import Call, Disconnected, Engine, LoadedModel

Req = TypeVar("Req")
Res = TypeVar("Res")
# Reports the model that answered a request, how many images it held, and the model's fingerprint
# (metrics, log and trace labels).
Label = Callable[[str, int, str], None]


class Door(ABC, Generic[Req, Res]):
    """One protocol's hooks. `read` takes the request off the wire, `model_name` and `call` say what to
    ask of the engine, `run` asks it (`Engine.run` unless a door needs another engine call), and
    `encode` turns the result into the protocol's answer."""

    def deadline(self, engine: Engine) -> float:
        """When the request must be answered (event-loop time): the engine's request timeout from now,
        or sooner where the protocol carries a deadline of its own (gRPC)."""
        return engine.deadline()

    @abstractmethod
    async def read(self, engine: Engine, deadline: float) -> Req:
        """The protocol's request, read and checked against `engine.limits` by `deadline`."""

    @abstractmethod
    def model_name(self, req: Req) -> str | None:
        """The model the request names; None for the default model."""

    @abstractmethod
    def call(self, req: Req, model: LoadedModel) -> Call:
        """The engine call the request asks for (its images, outputs, error policy)."""

    async def run(
        self,
        engine: Engine,
        model: LoadedModel,
        call: Call,
        deadline: float,
        disconnected: Disconnected | None,
    ) -> Any:
        return await engine.run(model, call, deadline=deadline, disconnected=disconnected)

    @abstractmethod
    def encode(self, req: Req, model: LoadedModel, result: Any) -> Res:
        """The protocol's answer; every answer names the model and carries its fingerprint."""


async def serve(
    engine: Engine, door: Door[Req, Res], *, label: Label, disconnected: Disconnected | None = None
) -> Res:
    """Runs `door`'s hooks in their fixed order; any failure propagates as the engine's or the door's
    error, for the door's own mapping onto its protocol."""
    deadline = door.deadline(engine)
    req = await door.read(engine, deadline)
    # The version found here answers the request: a reload meanwhile closes it only after this block.
    with engine.lease(door.model_name(req)) as model:
        try:
            call = door.call(req, model)
        except BaseException:
            label(model.name, 0, model.fingerprint)
            raise
        label(model.name, call.count, model.fingerprint)
        result = await door.run(engine, model, call, deadline, disconnected)
    start = time.perf_counter()
    answer = door.encode(req, model, result)
    engine.metrics.stage_duration.labels(model.name, "encode").observe(time.perf_counter() - start)
    return answer
