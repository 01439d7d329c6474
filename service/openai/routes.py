"""The OpenAI-compatible door: `POST /v1/embeddings` and `GET /v1/models`, translated onto the engine.

An embedding request goes: validate (`EmbeddingsRequest`) → `engine.model(name)` → `engine.run(images=...)`
→ L2-normalised vectors, as floats or base64, in OpenAI's answer. Images are decoded exactly as REST's
JSON images (data URIs or plain base64). Errors leave in OpenAI's shape (the app's error handlers).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from simpool_serve.service import encoding
from simpool_serve.service.engine import EngineError, Kind
from simpool_serve.service.openai import answers
from simpool_serve.service.openai.schemas import EmbeddingsOut, EmbeddingsRequest, ErrorOut, ModelsOut
from simpool_serve.service.parsing import describe, read_body
from simpool_serve.service.routes.deps import Authorized, EngineDep, MetricsDep, RecordDep, client_gone
from simpool_serve.spec import EMBEDDING

PREFIX = "/v1"

router = APIRouter(prefix=PREFIX, dependencies=[Authorized], tags=["OpenAI-compatible"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}


def error_shape(status: int, detail: str, error: EngineError | None) -> dict[str, Any]:
    return answers.error_body(status, detail, error.reason if error is not None else None)


@router.post(
    "/embeddings",
    summary="Embeddings (OpenAI-compatible)",
    description="L2-normalised embeddings of images given as data URIs or base64, in OpenAI's format.",
    response_model=EmbeddingsOut,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema()}},
        }
    },
)
async def embeddings(request: Request, engine: EngineDep, metrics: MetricsDep, record: RecordDep) -> Response:
    deadline = engine.deadline()
    settings = engine.settings
    body = await read_body(request, settings.max_request_bytes, deadline)
    try:
        req = EmbeddingsRequest.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise EngineError(Kind.INVALID, describe(exc), "malformed") from None
    images = [req.input] if isinstance(req.input, str) else req.input
    if not images:
        raise EngineError(Kind.INVALID, "input: give at least one image", "malformed")
    model = engine.model(req.model)
    record.model, record.images = model.name, len(images)
    dim = model.manifest.embedding_dim
    if req.dimensions is not None and req.dimensions != dim:
        raise EngineError(
            Kind.INVALID, f"dimensions: model {model.name!r} answers {dim} dimensions, not {req.dimensions}",
            "malformed",
        )  # fmt: skip
    answer = await engine.run(
        model,
        images=images,
        deadline=deadline,
        outputs=(EMBEDDING,),
        disconnected=lambda: client_gone(request),
    )
    start = time.perf_counter()
    vectors = encoding.embeddings(answer.outputs, True, req.encoding_format)
    content = encoding.json_bytes(answers.embeddings_body(model.name, model.fingerprint, vectors))
    metrics.stage_duration.labels(model.name, "encode").observe(time.perf_counter() - start)
    return Response(content, media_type="application/json")


@router.get("/models", summary="Models (OpenAI-compatible)", response_model=ModelsOut, responses=_ERRORS)
async def models(engine: EngineDep) -> dict[str, Any]:
    listing = [answers.model_entry(name, folder.manifest) for name, folder in engine.folders.items()]
    return {"object": "list", "data": listing}
