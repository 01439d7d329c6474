"""The REST door: `POST /embed`, `/attention`, `/classify`, translated onto the engine.

Each endpoint is a `RestDoor` on the door path (`service/door.py`): `parse_request` (JSON or
multipart, the engine's limits) → the model → `engine.run` → one JSON answer with `model` and
`fingerprint`, assembled the same way for the three endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from simpool_serve.service import encoding
from simpool_serve.service.door import Door
from simpool_serve.service.engine import (
    Answer,
    Call,
    Disconnected,
    Engine,
    EngineError,
    Kind,
    LoadedModel,
    boxes,
)
from simpool_serve.service.engine.descriptor import CROP
from simpool_serve.service.http_door import serve_http
from simpool_serve.service.openapi_schema import inline
from simpool_serve.service.parsing import (
    AttentionFields,
    AttentionJSON,
    ClassifyFields,
    ClassifyJSON,
    EmbedFields,
    EmbedJSON,
    Fields,
    Parsed,
    ViewFields,
    parse_request,
)
from simpool_serve.service.routes.deps import Authorized, EngineDep
from simpool_serve.service.schemas import AttentionOut, ClassifyOut, EmbedOut, error_responses
from simpool_serve.spec import ATTENTION, EMBEDDING, LOGITS

router = APIRouter(dependencies=[Authorized])

_IMAGE_ERRORS = (400, 401, 404, 413, 415, 422, 500, 503, 504)

# The answer's own fields, from the engine's answer and the request's fields.
FieldsOf = Callable[[Answer, Any], dict[str, Any]]


def _body_doc(json_model: type[Fields], form_model: type[Fields]) -> dict[str, Any]:
    """The request body in OpenAPI: the endpoint reads it itself, as JSON or as multipart."""
    form = inline(form_model)
    form["properties"] = {
        "images": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One file part per image, each named `images`.",
        },
        **form.get("properties", {}),
    }
    form["required"] = ["images"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline(json_model)},
                "multipart/form-data": {"schema": form},
            },
        }
    }


class RestDoor(Door[Parsed, Response]):
    """`/embed`, `/attention` (JSON) and `/classify`: a JSON or multipart body of images and fields in,
    one JSON answer out with `model`, `fingerprint`, the endpoint's own fields and (with
    `on_error=skip`) `errors`."""

    def __init__(
        self,
        request: Request,
        fields_type: type[Fields],
        outputs: tuple[str, ...],
        fields_of: FieldsOf,
        fingerprint_header: bool = False,
    ) -> None:
        self.request = request
        self.fields_type = fields_type
        self.outputs = outputs
        self.fields_of = fields_of
        self.fingerprint_header = fingerprint_header

    async def read(self, engine: Engine, deadline: float) -> Parsed:
        return await parse_request(self.request, self.fields_type, engine.limits, deadline)

    def model_name(self, req: Parsed) -> str | None:
        return req.fields.model

    def call(self, req: Parsed, model: LoadedModel) -> Call:
        fields = req.fields
        descriptor = fields.descriptor() if isinstance(fields, ViewFields) else CROP
        return Call(images=req.images, outputs=self.outputs, on_error=fields.on_error, descriptor=descriptor)

    def encode(self, req: Parsed, model: LoadedModel, result: Answer) -> Response:
        fields = self.fields_of(result, req.fields)
        payload = {"model": model.name, "fingerprint": result.fingerprint, **fields}
        if req.fields.on_error == "skip":
            payload["errors"] = [{"index": f.index, "detail": f.detail} for f in result.failures]
        headers = {"X-Fingerprint": result.fingerprint} if self.fingerprint_header else None
        return Response(encoding.json_bytes(payload), media_type="application/json", headers=headers)


class OverlayDoor(RestDoor):
    """`/attention?format=png`: one image in, its attention drawn over the photograph out, as PNG."""

    def __init__(self, request: Request) -> None:
        super().__init__(request, AttentionFields, (ATTENTION,), _attention_fields)

    def call(self, req: Parsed, model: LoadedModel) -> Call:
        if len(req.images) != 1:
            raise EngineError(Kind.INVALID, "format=png takes exactly one image", "malformed")
        return super().call(req, model)

    async def run(
        self,
        engine: Engine,
        model: LoadedModel,
        call: Call,
        deadline: float,
        disconnected: Disconnected | None,
    ) -> bytes:
        assert call.images is not None
        return await engine.attention_png(model, call.images[0], deadline=deadline, disconnected=disconnected)

    def encode(self, req: Parsed, model: LoadedModel, result: bytes) -> Response:  # type: ignore[override]
        return Response(result, media_type="image/png", headers={"X-Fingerprint": model.fingerprint})


def _embed_fields(answer: Answer, fields: EmbedFields) -> dict[str, Any]:
    first = next((o for o in answer.outputs if o is not None), None)
    dim = first[EMBEDDING].shape[-1] if first is not None else answer.model.manifest.embedding_dim
    return {
        "dim": int(dim),  # the whitened `dimensions` when asked
        "normalized": fields.normalize,
        "embeddings": encoding.embeddings(answer.outputs, fields.normalize, fields.encoding),
    }


def _attention_fields(answer: Answer, fields: AttentionFields) -> dict[str, Any]:
    maps = encoding.attention_maps(answer.outputs)
    found = boxes.boxes(maps, answer.geometries or [None] * len(maps), fields.box_mass)
    if fields.view == "full":  # each image at its own aspect ratio: a grid per image
        grid: list[Any] = [None if o is None else list(o[ATTENTION].shape) for o in answer.outputs]
    else:
        grid = list(answer.model.manifest.grid)
    return {"grid": grid, "attention": maps, "boxes": found}


def _classify_fields(answer: Answer, fields: ClassifyFields) -> dict[str, Any]:
    return {"predictions": encoding.predictions(answer.outputs, answer.model.manifest, fields.top_k)}


@router.post(
    "/embed",
    summary="Embed images",
    description="The SimPool embedding of each image, in request order.",
    response_model=EmbedOut,
    response_model_exclude_none=True,
    responses=error_responses(*_IMAGE_ERRORS),
    openapi_extra=_body_doc(EmbedJSON, EmbedFields),
)
async def embed(request: Request, engine: EngineDep) -> Response:
    return await serve_http(request, engine, RestDoor(request, EmbedFields, (EMBEDDING,), _embed_fields))


@router.post(
    "/attention",
    summary="SimPool attention maps",
    description="Each image's attention over the final feature grid (JSON), or with `format=png` "
    "a heat map over the original photograph, at its original size (one image).",
    response_model=AttentionOut,
    response_model_exclude_none=True,
    responses={
        **error_responses(*_IMAGE_ERRORS),
        200: {"content": {"image/png": {}}, "description": "JSON maps, or a PNG with `format=png`."},
    },
    openapi_extra=_body_doc(AttentionJSON, AttentionFields),
)
async def attention(
    request: Request,
    engine: EngineDep,
    format: Annotated[
        Literal["json", "png"], Query(description="`png`: a heat-map overlay (one image).")
    ] = "json",
) -> Response:
    if format == "png":
        return await serve_http(request, engine, OverlayDoor(request))
    door = RestDoor(request, AttentionFields, (ATTENTION,), _attention_fields, fingerprint_header=True)
    return await serve_http(request, engine, door)


@router.post(
    "/classify",
    summary="Classify images",
    description="Softmax probabilities of the model's classes, the `top_k` best per image. A model "
    "without a classifier (num_classes 0) answers 422.",
    response_model=ClassifyOut,
    response_model_exclude_none=True,
    responses=error_responses(*_IMAGE_ERRORS),
    openapi_extra=_body_doc(ClassifyJSON, ClassifyFields),
)
async def classify(request: Request, engine: EngineDep) -> Response:
    return await serve_http(request, engine, RestDoor(request, ClassifyFields, (LOGITS,), _classify_fields))
