"""The Open Inference Protocol's `GRPCInferenceService`, translated onto the engine.

Inference is a `GrpcInferDoor` on the door path (`service/door.py`), so it shares the HTTP doors'
engine, batchers, limits and deadline (the call's own deadline too, when it is sooner). Metadata,
configuration and the repository answer what the `/v2` routes answer, built by the same functions.
Every RPC is counted, timed and logged once, as `grpc:<Rpc>`; the API key travels as the metadata
`authorization: Bearer <key>` (the liveness and readiness RPCs, like HTTP's probes, need none).
RPCs not listed here (statistics, shared memory, trace and log settings, streaming) are UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format

from simpool_serve.service.door import Door, Label, serve
from simpool_serve.service.engine import Answer, Call, Engine, EngineError, LoadedModel
from simpool_serve.service.grpc import tensors
from simpool_serve.service.grpc.status import code_of, http_equivalent
from simpool_serve.service.grpc.stubs import grpc_service_pb2 as pb
from simpool_serve.service.grpc.stubs import grpc_service_pb2_grpc as pb_grpc
from simpool_serve.service.grpc.stubs import model_config_pb2 as mc
from simpool_serve.service.http_status import Failure
from simpool_serve.service.keys import NO_KEY, KeyRing
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.oip import codec, repository
from simpool_serve.service.oip import routes as oip
from simpool_serve.service.oip.inference import call_of, check_version, output_tensors
from simpool_serve.service.oip.model_config import triton_config
from simpool_serve.service.refusals import Refusal, unauthenticated

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("simpool_serve.app")
T = TypeVar("T")
_PROBES = {"ServerLive", "ServerReady", "ModelReady"}  # open and logged at debug level, as HTTP's probes
_NO_DEADLINE = 1e9  # time_remaining() of a call without a deadline is about forever
# A call cancelled this close to its deadline was ended by it (the client's timer fires a moment before
# the server's): counted as 504, not 499.
_AT_DEADLINE_S = 0.05


class GrpcInferDoor(Door[tuple[codec.InferRequest, bool], pb.ModelInferResponse]):
    """`ModelInfer`: typed or raw contents in, the same form out."""

    def __init__(self, request: pb.ModelInferRequest, call_deadline: float | None) -> None:
        self.request = request
        self.call_deadline = call_deadline

    async def read(self, engine: Engine, deadline: float) -> tuple[codec.InferRequest, bool]:
        return tensors.parse(self.request, engine.limits)

    def model_name(self, req: tuple[codec.InferRequest, bool]) -> str | None:
        return self.request.model_name or None

    def call(self, req: tuple[codec.InferRequest, bool], model: LoadedModel) -> Call:
        check_version(model, self.request.model_version)
        return call_of(req[0], model)

    def deadline(self, engine: Engine) -> float:
        """The client's deadline, capped by the server's."""
        server = engine.deadline()
        return server if self.call_deadline is None else min(server, self.call_deadline)

    def encode(
        self, req: tuple[codec.InferRequest, bool], model: LoadedModel, result: Answer
    ) -> pb.ModelInferResponse:
        parsed, raw = req
        arrays = output_tensors(parsed, model, result)
        return tensors.response(model.name, parsed.id, result.fingerprint, arrays, raw)


def _call_deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return asyncio.get_running_loop().time() + remaining


def _end_span(span: Any, labels: list[Any], code: grpc.StatusCode, status: int) -> str:
    """The RPC's outcome and the door path's labels on its span; returns the trace id for the log."""
    from opentelemetry.trace import Status, StatusCode, format_trace_id

    span.set_attribute("rpc.system", "grpc")
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if labels[0]:
        span.set_attribute("simpool.model", labels[0])
        span.set_attribute("simpool.images", labels[1])
        span.set_attribute("simpool.fingerprint", labels[2])
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    return str(format_trace_id(span.get_span_context().trace_id))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """One engine's RPCs; `keys` (open when none is required) guard every RPC but the probes."""

    def __init__(self, engine: Engine, metrics: Metrics, keys: KeyRing, tracer: Tracer | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self._keys = keys
        self._tracer = tracer  # None: tracing is off

    # -- the frame of every RPC ------------------------------------------------------------------

    def _check_key(self, context: grpc.aio.ServicerContext) -> str:
        """The name of the key the call was let in with (`none` when no key is required)."""
        if not self._keys.required:
            return NO_KEY
        given = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        scheme, _, token = (given if isinstance(given, str) else "").partition(" ")
        if given is None or scheme.lower() != "bearer":
            raise unauthenticated("missing API key: send it as the metadata `authorization: Bearer <key>`")
        name = self._keys.name_of(token.strip())
        if name is None:
            raise unauthenticated("wrong API key: send it as the metadata `authorization: Bearer <key>`")
        return name

    async def _answer(
        self, rpc: str, context: grpc.aio.ServicerContext, work: Callable[[Label], Awaitable[T]]
    ) -> T:
        """Runs one RPC: the key, the work, the failure's status; one count, duration and log line."""
        start = time.perf_counter()
        labels: list[Any] = ["", 0, ""]
        key = NO_KEY
        status, code = 200, grpc.StatusCode.OK
        traced = self._server_span(rpc, context) if self._tracer is not None else contextlib.nullcontext()

        def label(model: str, images: int, fingerprint: str) -> None:
            labels[:] = [model, images, fingerprint]

        with traced as span:  # None when tracing is off
            try:
                if rpc not in _PROBES:
                    key = self._check_key(context)
                return await work(label)
            except (EngineError, Refusal) as exc:
                status, code = http_equivalent(exc), code_of(exc)
                if span is not None:
                    span.record_exception(exc, attributes={"simpool.reason": exc.reason})
                await self._abort(context, exc, labels[0])  # raises: the RPC ends with `code`
                raise
            except asyncio.CancelledError:  # the client left; at its deadline, that is the deadline passing
                remaining = context.time_remaining()
                late = remaining is not None and remaining < _AT_DEADLINE_S
                status = 504 if late else 499
                code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                log.error("unhandled error", exc_info=exc)
                status, code = 500, grpc.StatusCode.INTERNAL
                await context.abort(code, "internal error; the details are in the server log")
                raise
            finally:
                endpoint = f"grpc:{rpc}"
                seconds = time.perf_counter() - start
                extra: dict[str, Any] = {}
                if span is not None:
                    extra["trace_id"] = _end_span(span, labels, code, status)
                self.metrics.requests.labels(endpoint, labels[0], str(status), key).inc()
                self.metrics.request_duration.labels(endpoint).observe(seconds)
                log.log(
                    logging.DEBUG if rpc in _PROBES else logging.INFO,
                    "request",
                    extra={
                        "method": "gRPC",
                        "endpoint": endpoint,
                        "model": labels[0],
                        "images": labels[1],
                        "status": status,
                        "key": key,
                        "grpc_code": code.name,
                        "duration_ms": round(seconds * 1000, 2),
                        **extra,
                    },
                )

    def _server_span(self, rpc: str, context: grpc.aio.ServicerContext) -> Any:
        """The RPC's server span, continuing the caller's trace (`traceparent` in the metadata)."""
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        assert self._tracer is not None
        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        # The outcome is set by `_answer` (an abort is how every refusal ends, not an error of ours).
        return self._tracer.start_as_current_span(
            f"grpc:{rpc}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )

    async def _abort(self, context: grpc.aio.ServicerContext, error: Failure, model: str) -> None:
        self.metrics.failures.labels(model, error.reason).inc()
        if error.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, error.retry_after_s))),))
        await context.abort(code_of(error), error.detail)

    # -- health and metadata ---------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        async def work(label: Label) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._answer("ServerLive", context, work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        async def work(label: Label) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.engine.not_ready_reason() is None)

        return await self._answer("ServerReady", context, work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def work(label: Label) -> pb.ModelReadyResponse:
            model = self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=model.batcher.alive)

        return await self._answer("ModelReady", context, work)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        async def work(label: Label) -> pb.ServerMetadataResponse:
            meta = await oip.server_metadata()
            return pb.ServerMetadataResponse(**meta)

        return await self._answer("ServerMetadata", context, work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def work(label: Label) -> pb.ModelMetadataResponse:
            model = self._model(request.name, request.version)
            meta = await oip.model_metadata(engine=self.engine, model=model.name, version=None)
            tensor = pb.ModelMetadataResponse.TensorMetadata

            def tensors_of(key: str) -> list[Any]:
                return [tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta[key]]

            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=tensors_of("inputs"),
                outputs=tensors_of("outputs"),
            )

        return await self._answer("ModelMetadata", context, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        async def work(label: Label) -> pb.ModelConfigResponse:
            model = self._model(request.name, request.version)
            config = json_format.ParseDict(triton_config(model.manifest, model.name), mc.ModelConfig())
            return pb.ModelConfigResponse(config=config)

        return await self._answer("ModelConfig", context, work)

    def _model(self, name: str, version: str) -> LoadedModel:
        model = self.engine.model(name or None)
        check_version(model, version)
        return model

    # -- inference -------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def work(label: Label) -> pb.ModelInferResponse:
            door = GrpcInferDoor(request, _call_deadline(context))
            return await serve(self.engine, door, label=label)

        return await self._answer("ModelInfer", context, work)

    # -- model repository ------------------------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        async def work(label: Label) -> pb.RepositoryIndexResponse:
            entry = pb.RepositoryIndexResponse.ModelIndex
            models = [entry(**m) for m in repository.index(self.engine, request.ready)]
            return pb.RepositoryIndexResponse(models=models)

        return await self._answer("RepositoryIndex", context, work)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def work(label: Label) -> pb.RepositoryModelLoadResponse:
            await repository.load(self.engine, request.model_name, request.parameters.keys())
            return pb.RepositoryModelLoadResponse()

        return await self._answer("RepositoryModelLoad", context, work)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def work(label: Label) -> pb.RepositoryModelUnloadResponse:
            await repository.unload(self.engine, request.model_name, request.parameters.keys())
            return pb.RepositoryModelUnloadResponse()

        return await self._answer("RepositoryModelUnload", context, work)
