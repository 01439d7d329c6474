"""The gRPC server: `GRPCInferenceService` and `grpc.health.v1.Health` on one port, beside uvicorn.

It runs on the app's event loop with the app's engine (the lifespan starts and stops it), so both
protocols share one set of models, batchers and limits. The port binds without SO_REUSEPORT: with
it, a second server on the same port would silently take half of the new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from simpool_serve.service.engine import Engine
from simpool_serve.service.grpc.servicer import InferenceServicer
from simpool_serve.service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
from simpool_serve.service.keys import KeyRing
from simpool_serve.service.metrics import Metrics

log = logging.getLogger("simpool_serve.grpc")

SERVICE = "inference.GRPCInferenceService"
# Above the request byte limit (by a margin for the message's framing), so an oversized image or
# request gets the service's own INVALID_ARGUMENT answer rather than gRPC's RESOURCE_EXHAUSTED.
if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

_FRAMING = 1 << 20
_HEALTH_POLL_S = 0.5


class BindError(Exception):
    """The gRPC port could not be bound (in use, or not an address of this machine)."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _report_death(task: asyncio.Task[None]) -> None:
    """The health follower only ends by cancellation; anything else is logged, never silent."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the gRPC health follower stopped: probes keep its last answer", exc_info=task.exception())


class GrpcServer:
    """One engine's gRPC server; `start` binds and serves, `stop` drains within its grace."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        keys: KeyRing,
        host: str,
        port: int,
        tracer: Tracer | None = None,
    ) -> None:
        self.engine = engine
        self.host, self.port = host, port
        limit = engine.limits.max_request_bytes + _FRAMING
        self._server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(engine, metrics, keys, tracer), self._server
        )
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._watch: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> int:
        """Binds and starts serving; returns the port. BindError when the address cannot be bound."""
        where = address(self.host, self.port)
        try:
            bound = self._server.add_insecure_port(where)
        except RuntimeError as exc:
            raise BindError(f"cannot listen for gRPC on {where}: {exc}") from exc
        if bound == 0:
            raise BindError(f"cannot listen for gRPC on {where}")
        await self._server.start()
        self._watch = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        self._watch.add_done_callback(_report_death)
        log.info(f"gRPC listening on {address(self.host, bound)}", extra={"grpc_port": bound})
        return bound

    async def _follow_readiness(self) -> None:
        """Keeps grpc.health.v1 in step with the engine: SERVING while every model answers."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        last = None
        while True:
            status = serving if self.engine.not_ready_reason() is None else not_serving
            if status != last:
                for service in ("", SERVICE):
                    await self._health.set(service, status)
                last = status
            await asyncio.sleep(_HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        """Refuses new calls, lets those in flight finish within `grace_s`, then closes. Called at the
        signal (beside uvicorn's own drain) and again by the lifespan: the second call waits for the
        first."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._health.enter_graceful_shutdown()  # probes see NOT_SERVING at once
        await self._server.stop(grace_s)
        log.info("gRPC stopped")
