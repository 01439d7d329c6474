"""The Open Inference Protocol door (KServe v2 / Triton HTTP), translated onto the engine.

An inference is an `InferDoor` on the door path (`service/door.py`): the body (the engine's limits,
the deadline) → `codec.parse_request` → `engine.model(m)` → `engine.run` → `codec.encode_response`.
Decoding, batching, limits and the API key are the engine's and the app's, exactly as for REST; this
module only translates. Errors leave as `{"error": "..."}` (the app's error handlers, by path prefix).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from simpool_serve import __version__
from simpool_serve.service.door import Door
from simpool_serve.service.engine import Answer, Call, Engine, LoadedModel
from simpool_serve.service.http_door import read_body, serve_http
from simpool_serve.service.http_status import Failure
from simpool_serve.service.oip import codec, repository
from simpool_serve.service.oip.inference import VERSION, call_of, check_version, output_tensors
from simpool_serve.service.oip.model_config import PLATFORM, triton_config
from simpool_serve.service.oip.schemas import (
    INFER_EXAMPLE,
    ErrorOut,
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    RepositoryControlRequest,
    RepositoryIndexRequest,
    RepositoryModel,
    ServerMetadata,
)
from simpool_serve.service.openapi_schema import inline
from simpool_serve.service.routes.deps import Authorized, EngineDep
from simpool_serve.service.validation import describe
from simpool_serve.spec import ATTENTION, EMBEDDING, LOGITS

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]

router = APIRouter(prefix=PREFIX, dependencies=[Authorized], tags=["Open Inference Protocol"])
probes = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol"])  # open, like /healthz and /readyz


def error_shape(status: int, detail: str, error: Failure | None) -> dict[str, Any]:
    """The protocol's error body; Triton's and KServe's clients raise with its `error` as the message."""
    return {"error": detail}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}


def _model(engine: Engine, name: str, version: str | None) -> LoadedModel:
    model = engine.model(name)
    check_version(model, version)
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


class InferDoor(Door[codec.InferRequest, Response]):
    """`POST /v2/models/{m}/infer`: JSON tensors or binary tensor data in and out."""

    def __init__(self, request: Request, model: str, version: str | None) -> None:
        self.request = request
        self.model = model
        self.version = version

    async def read(self, engine: Engine, deadline: float) -> codec.InferRequest:
        headers = self.request.headers
        body = await read_body(self.request, engine.limits, deadline)
        body = codec.inflate(body, headers.get("content-encoding"), engine.limits)
        json_length = codec.header_length(headers.get(HEADER_LENGTH), len(body))
        return codec.parse_request(body, json_length, engine.limits)

    def model_name(self, req: codec.InferRequest) -> str:
        return self.model

    def call(self, req: codec.InferRequest, model: LoadedModel) -> Call:
        check_version(model, self.version)
        return call_of(req, model)

    def encode(self, req: codec.InferRequest, model: LoadedModel, result: Answer) -> Response:
        tensors = output_tensors(req, model, result)
        content, header = codec.encode_response(model.name, req.id, result.fingerprint, tensors)
        if header is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})


@router.post(
    "/models/{model}/infer",
    summary="Inference",
    description="One input: `images` as BYTES (encoded files) or UINT8 [N, S, S, 3] (pixels, as Triton "
    "serving the same export takes them), or `pixels` (UINT8 [N, S, S, 3]); outputs "
    "`embedding`, `attention`, `logits`. JSON tensors or the binary tensor data extension.",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline(InferenceRequest), "example": INFER_EXAMPLE},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
@router.post("/models/{model}/versions/{version}/infer", include_in_schema=False)
async def infer(request: Request, engine: EngineDep, model: str, version: str | None = None) -> Response:
    return await serve_http(request, engine, InferDoor(request, model, version))


# -- model repository ------------------------------------------------------------------------------


@router.post(
    "/repository/index",
    summary="Model repository index",
    description="Every model folder with its `state` (READY, UNAVAILABLE or LOADING) and `reason`; "
    'the body `{"ready": true}` keeps only the READY ones.',
    response_model=list[RepositoryModel],
    responses=_ERRORS,
)
async def repository_index(request: Request, engine: EngineDep) -> list[dict[str, Any]]:
    body = await read_body(request, engine.limits)
    try:
        wanted = RepositoryIndexRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise codec.malformed(describe(exc)) from None
    return repository.index(engine, wanted.ready)


_CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 413, 422)
}


async def _parameters(request: Request, engine: Engine) -> list[str]:
    """The names of a load or unload body's `parameters` (Triton's clients may send `{}` or none)."""
    body = await read_body(request, engine.limits)
    try:
        wanted = RepositoryControlRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise codec.malformed(describe(exc)) from None
    return list(wanted.parameters)


@router.post(
    "/repository/models/{model}/load",
    summary="Load or reload a model (SIMPOOL_MODEL_CONTROL=explicit; 403 otherwise)",
    description="Verifies and warms the folder's graph beside the serving version, then swaps it in; "
    "answers 200 once the model serves, or 400 with the reason (the serving version, if any, stays).",
    responses=_CONTROL_ERRORS,
)
async def repository_load(request: Request, engine: EngineDep, model: str) -> Response:
    await repository.load(engine, model, await _parameters(request, engine))
    return Response(status_code=200)


@router.post(
    "/repository/models/{model}/unload",
    summary="Unload a model (SIMPOOL_MODEL_CONTROL=explicit; 403 otherwise)",
    description="New requests get 404 at once; those in flight finish, then its memory is freed. "
    "Answers 200 once it is closed (also when it was not loaded).",
    responses=_CONTROL_ERRORS,
)
async def repository_unload(request: Request, engine: EngineDep, model: str) -> Response:
    await repository.unload(engine, model, await _parameters(request, engine))
    return Response(status_code=200)
