"""The OpenAI-compatible door: `POST /v1/embeddings` and `GET /v1/models`, translated onto the engine.

An embedding request is an `EmbeddingsDoor` on the door path (`service/door.py`): validate
(`EmbeddingsRequest`) → `engine.model(name)` → `engine.run` → L2-normalised vectors, as floats or
base64, in OpenAI's answer. Images are decoded exactly as REST's JSON images (data URIs or plain
base64). Errors leave in OpenAI's shape (the app's error handlers).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from simpool_serve.service import encoding
from simpool_serve.service.door import Door
from simpool_serve.service.engine import Answer, Call, Engine, EngineError, Kind, LoadedModel
from simpool_serve.service.http_door import read_body, serve_http
from simpool_serve.service.http_status import Failure
from simpool_serve.service.openai import answers
from simpool_serve.service.openai.schemas import EmbeddingsOut, EmbeddingsRequest, ErrorOut, ModelsOut
from simpool_serve.service.routes.deps import Authorized, EngineDep
from simpool_serve.service.validation import describe
from simpool_serve.spec import EMBEDDING

PREFIX = "/v1"

router = APIRouter(prefix=PREFIX, dependencies=[Authorized], tags=["OpenAI-compatible"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}


def error_shape(status: int, detail: str, error: Failure | None) -> dict[str, Any]:
    return answers.error_body(status, detail, error.reason if error is not None else None)


class EmbeddingsDoor(Door[EmbeddingsRequest, Response]):
    """`POST /v1/embeddings`: OpenAI's request in, L2-normalised vectors in OpenAI's answer out."""

    def __init__(self, request: Request) -> None:
        self.request = request

    async def read(self, engine: Engine, deadline: float) -> EmbeddingsRequest:
        body = await read_body(self.request, engine.limits, deadline)
        try:
            req = EmbeddingsRequest.model_validate_json(body, strict=True)
        except ValidationError as exc:
            raise EngineError(Kind.INVALID, describe(exc), "malformed") from None
        if isinstance(req.input, list) and not req.input:
            raise EngineError(Kind.INVALID, "input: give at least one image", "malformed")
        return req

    def model_name(self, req: EmbeddingsRequest) -> str:
        return req.model

    def call(self, req: EmbeddingsRequest, model: LoadedModel) -> Call:
        dim = model.manifest.embedding_dim
        if req.dimensions is not None and req.dimensions != dim:
            raise EngineError(
                Kind.INVALID,
                f"dimensions: model {model.name!r} answers {dim} dimensions, not {req.dimensions}",
                "malformed",
            )
        images = [req.input] if isinstance(req.input, str) else req.input
        return Call(images=images, outputs=(EMBEDDING,))

    def encode(self, req: EmbeddingsRequest, model: LoadedModel, result: Answer) -> Response:
        vectors = encoding.embeddings(result.outputs, True, req.encoding_format)
        body = answers.embeddings_body(model.name, model.fingerprint, vectors)
        return Response(encoding.json_bytes(body), media_type="application/json")


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
async def embeddings(request: Request, engine: EngineDep) -> Response:
    return await serve_http(request, engine, EmbeddingsDoor(request))


@router.get("/models", summary="Models (OpenAI-compatible)", response_model=ModelsOut, responses=_ERRORS)
async def models(engine: EngineDep) -> dict[str, Any]:
    listing = [answers.model_entry(name, folder.manifest) for name, folder in engine.folders.items()]
    return {"object": "list", "data": listing}
