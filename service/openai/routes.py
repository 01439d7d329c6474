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
from simpool_serve.service.engine.descriptor import Descriptor
from simpool_serve.service.http_door import read_body, serve_http
from simpool_serve.service.http_status import Failure
from simpool_serve.service.openai import answers
from simpool_serve.service.openai.schemas import (
    EmbeddingsOut,
    EmbeddingsRequest,
    ErrorOut,
    ModelOut,
    ModelsOut,
)
from simpool_serve.service.openapi_schema import inline
from simpool_serve.service.routes.deps import Authorized, EngineDep
from simpool_serve.service.validation import describe
from simpool_serve.spec import EMBEDDING

PREFIX = "/v1"
# The request fields that make the engine's descriptor (`dimensions` among them, implying `whiten`).
DESCRIPTOR_FIELDS = {"view", "size", "scales", "region", "whiten", "dimensions"}

router = APIRouter(prefix=PREFIX, dependencies=[Authorized], tags=["OpenAI-compatible"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 413, 415, 422, 503, 504)
}


def error_shape(status: int, detail: str, error: Failure | None) -> dict[str, Any]:
    return answers.error_body(status, detail, error.reason if error is not None else None)


# The shortest base64 of any image file is longer than this (a 1×1 PNG is 67 bytes, 92 characters).
_SHORTEST_IMAGE = 64
_HOW = "these models embed images, not text: send each image as a data URI (data:image/jpeg;base64,...) or "
_HOW += "as plain base64 of the file"


def _refuse_text(value: str | list[Any]) -> None:
    """Token arrays and plain text get 400 saying how to send an image, not a decoder's complaint."""
    items = [value] if isinstance(value, str) else value
    for i, item in enumerate(items):
        if isinstance(item, int | list):
            raise EngineError(Kind.BAD_IMAGE, f"input {i} is a token array; {_HOW}", "text_input")
        if item[:5].lower() == "data:":
            continue
        if len(item) < _SHORTEST_IMAGE or " " in item.strip():
            raise EngineError(Kind.BAD_IMAGE, f"image {i} looks like text; {_HOW}", "text_input")


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
        _refuse_text(req.input)
        return req

    def model_name(self, req: EmbeddingsRequest) -> str:
        return req.model

    def call(self, req: EmbeddingsRequest, model: LoadedModel) -> Call:
        try:
            descriptor = Descriptor.from_parameters(req.model_dump(include=DESCRIPTOR_FIELDS))
        except ValidationError as exc:
            raise EngineError(Kind.INVALID, describe(exc), "malformed") from None
        images = [req.input] if isinstance(req.input, str) else req.input
        return Call(images=images, outputs=(EMBEDDING,), descriptor=descriptor)  # type: ignore[arg-type]

    def encode(self, req: EmbeddingsRequest, model: LoadedModel, result: Answer) -> Response:
        vectors = encoding.embeddings(result.outputs, True, req.encoding_format)
        body = answers.embeddings_body(model.name, result.fingerprint, vectors)
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
            "content": {"application/json": {"schema": inline(EmbeddingsRequest)}},
        }
    },
)
async def embeddings(request: Request, engine: EngineDep) -> Response:
    return await serve_http(request, engine, EmbeddingsDoor(request))


@router.get("/models", summary="Models (OpenAI-compatible)", response_model=ModelsOut, responses=_ERRORS)
async def models(engine: EngineDep) -> dict[str, Any]:
    listing = [answers.model_entry(name, served.manifest) for name, served in engine.models.items()]
    return {"object": "list", "data": listing}


@router.get(
    "/models/{model_id}", summary="Model (OpenAI-compatible)", response_model=ModelOut, responses=_ERRORS
)
async def model(engine: EngineDep, model_id: str) -> dict[str, Any]:
    served = engine.models.get(model_id)
    if served is None:
        shown = model_id if len(model_id) <= 100 else f"{model_id[:100]}..."
        raise EngineError(Kind.NOT_FOUND, f"unknown model {shown!r}", "unknown_model")
    return answers.model_entry(model_id, served.manifest)
