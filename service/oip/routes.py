"""The Open Inference Protocol door (KServe v2 / Triton HTTP), translated onto the engine.

An inference goes: `engine.model(m)` → the body (request limits, deadline) → `codec.parse_request`
→ `engine.run(images=... | pixels=...)` → `codec.encode_response`. Decoding, batching, limits and the
API key are the engine's and the app's, exactly as for REST; this module only translates. Errors
leave as `{"error": "..."}` (the app's error handlers, by path prefix).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from simpool_serve import __version__
from simpool_serve.service import encoding
from simpool_serve.service.engine import Engine, EngineError, Kind, LoadedModel
from simpool_serve.service.oip import codec
from simpool_serve.service.oip.model_config import PLATFORM, triton_config
from simpool_serve.service.oip.schemas import (
    ErrorOut,
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
)
from simpool_serve.service.parsing import read_body
from simpool_serve.service.routes.deps import Authorized, EngineDep, MetricsDep, RecordDep, client_gone
from simpool_serve.spec import ATTENTION, EMBEDDING, LOGITS

PREFIX = "/v2"
VERSION = "1"  # every model has one version: the graph in its folder
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]

router = APIRouter(prefix=PREFIX, dependencies=[Authorized], tags=["Open Inference Protocol"])
probes = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol"])  # open, like /healthz and /readyz


def error_shape(status: int, detail: str, error: EngineError | None) -> dict[str, Any]:
    """The protocol's error body; Triton's and KServe's clients raise with its `error` as the message."""
    return {"error": detail}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}


def _model(engine: Engine, name: str, version: str | None) -> LoadedModel:
    model = engine.model(name)
    if version is not None and version != VERSION:
        raise EngineError(
            Kind.NOT_FOUND,
            f"model {model.name!r} has no version {version!r}; it has {VERSION!r}",
            "unknown_model",
        )
    return model


# -- health and metadata ---------------------------------------------------------------------------


@probes.get("/health/live", summary="Server liveness", response_model=Live)
async def live() -> dict[str, bool]:
    return {"live": True}


@probes.get(
    "/health/ready", summary="Server readiness", response_model=Ready, responses={503: {"model": Ready}}
)
async def ready(engine: EngineDep) -> JSONResponse:
    reason = engine.not_ready_reason()
    if reason is not None:
        return JSONResponse({"ready": False, "error": reason}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"ready": True})


@probes.get("/models/{model}/ready", summary="Model readiness", response_model=ModelReady, responses=_ERRORS)
@probes.get("/models/{model}/versions/{version}/ready", include_in_schema=False)
async def model_ready(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    served = _model(engine, model, version)  # 503 while it loads, 404 if unknown
    return {"name": served.name, "ready": served.batcher.alive}


@router.get("", summary="Server metadata", response_model=ServerMetadata, responses=_ERRORS)
async def server_metadata() -> dict[str, Any]:
    return {"name": "simpool-serve", "version": __version__, "extensions": EXTENSIONS}


@router.get("/models/{model}", summary="Model metadata", response_model=ModelMetadata, responses=_ERRORS)
@router.get("/models/{model}/versions/{version}", include_in_schema=False)
async def model_metadata(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    served = _model(engine, model, version)
    m = served.manifest
    outputs = [
        {"name": EMBEDDING, "datatype": "FP32", "shape": [-1, m.embedding_dim]},
        {"name": ATTENTION, "datatype": "FP32", "shape": [-1, *m.grid]},
    ]
    if served.has_logits:
        outputs.append({"name": LOGITS, "datatype": "FP32", "shape": [-1, m.num_classes]})
    return {
        "name": served.name,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [
            {"name": codec.IMAGES, "datatype": "BYTES", "shape": [-1]},
            {"name": codec.PIXELS, "datatype": "UINT8", "shape": [-1, m.input_size, m.input_size, 3]},
        ],
        "outputs": outputs,
        "parameters": {"fingerprint": served.fingerprint},
    }


@router.get(
    "/models/{model}/config",
    summary="Model configuration (Triton)",
    description="The model's Triton configuration, as `simpool-export --triton-repo` writes it.",
    responses=_ERRORS,
)
@router.get("/models/{model}/versions/{version}/config", include_in_schema=False)
async def model_config(engine: EngineDep, model: str, version: str | None = None) -> dict[str, Any]:
    served = _model(engine, model, version)
    return triton_config(served.manifest, served.name)


# -- inference -------------------------------------------------------------------------------------


def _tensor(outputs: list[dict[str, np.ndarray] | None], name: str, normalize: bool) -> np.ndarray:
    if name == EMBEDDING and normalize:  # the same normalisation as REST's /embed
        return np.stack(encoding.embeddings(outputs, True, "float"))
    return np.stack([o[name] for o in outputs if o is not None])


@router.post(
    "/models/{model}/infer",
    summary="Inference",
    description="One input, `images` (BYTES: encoded files) or `pixels` (UINT8 [N, S, S, 3]); outputs "
    "`embedding`, `attention`, `logits`. JSON tensors or the binary tensor data extension.",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": InferenceRequest.model_json_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
@router.post("/models/{model}/versions/{version}/infer", include_in_schema=False)
async def infer(
    request: Request,
    engine: EngineDep,
    metrics: MetricsDep,
    record: RecordDep,
    model: str,
    version: str | None = None,
) -> Response:
    deadline = engine.deadline()
    settings = engine.settings
    # The body is read whole before any answer, even a 404: a client still sending it would see its
    # connection reset instead of the error.
    body = await read_body(request, settings.max_request_bytes, deadline)
    served = _model(engine, model, version)
    record.model = served.name
    body = codec.inflate(body, request.headers.get("content-encoding"), settings.max_request_bytes)
    json_length = codec.header_length(request.headers.get(HEADER_LENGTH), len(body))
    req = codec.parse_request(body, json_length, settings.max_images_per_request)
    record.images = req.count
    choices = req.choose_outputs(served.output_names)
    tensor = req.tensor
    answer = await engine.run(
        served,
        images=tensor.payloads if isinstance(tensor, codec.Images) else None,
        pixels=tensor.array if isinstance(tensor, codec.Pixels) else None,
        deadline=deadline,
        outputs=[c.name for c in choices],
        disconnected=lambda: client_gone(request),
    )
    start = time.perf_counter()
    tensors = [(c, _tensor(answer.outputs, c.name, req.normalize)) for c in choices]
    content, header = codec.encode_response(served.name, req.id, served.fingerprint, tensors)
    metrics.stage_duration.labels(served.name, "encode").observe(time.perf_counter() - start)
    if header is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})
