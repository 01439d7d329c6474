"""The REST door: `POST /embed`, `/attention`, `/classify`, translated onto the engine.

A request goes: `parse_request` (JSON or multipart, request limits) → `engine.model(name)` →
`engine.run(...)` → the answer, with `model` and `fingerprint`, assembled on one path for the three
endpoints (`_answer`), which also times its encoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from simpool_serve.service import boxes, encoding
from simpool_serve.service.engine import Answer, Engine, EngineError, Kind, LoadedModel
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.observe import RequestRecord
from simpool_serve.service.parsing import (
    AttentionFields,
    AttentionJSON,
    ClassifyFields,
    ClassifyJSON,
    EmbedFields,
    EmbedJSON,
    Fields,
    Limits,
    Parsed,
    parse_request,
)
from simpool_serve.service.routes.deps import Authorized, EngineDep, MetricsDep, RecordDep, client_gone
from simpool_serve.service.schemas import AttentionOut, ClassifyOut, EmbedOut, error_responses
from simpool_serve.spec import ATTENTION, EMBEDDING, LOGITS

router = APIRouter(dependencies=[Authorized])

_IMAGE_ERRORS = (400, 401, 404, 413, 415, 422, 500, 503, 504)

# The answer's own fields, from the engine's answer and the request's fields.
FieldsOf = Callable[[Answer, Any], dict[str, Any]]


def _body_doc(json_model: type[Fields], form_model: type[Fields]) -> dict[str, Any]:
    """The request body in OpenAPI: the endpoint reads it itself, as JSON or as multipart."""
    form = form_model.model_json_schema()
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
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": form},
            },
        }
    }


async def _begin(
    request: Request, engine: Engine, record: RequestRecord, fields_type: type[Fields]
) -> tuple[Parsed, LoadedModel, float]:
    """Parses the request (its deadline starts now) and finds its model, which the record learns."""
    deadline = engine.deadline()
    limits = Limits(engine.settings.max_request_bytes, engine.settings.max_images_per_request)
    parsed = await parse_request(request, fields_type, limits, deadline)
    model = engine.model(parsed.fields.model)
    record.model, record.images = model.name, len(parsed.images)
    return parsed, model, deadline


async def _answer(
    request: Request,
    engine: Engine,
    metrics: Metrics,
    record: RequestRecord,
    fields_type: type[Fields],
    outputs: tuple[str, ...],
    fields_of: FieldsOf,
    fingerprint_header: bool = False,
) -> Response:
    """The one path of the JSON answers: run the images, then `model`, `fingerprint`, the endpoint's
    own fields and (with `on_error=skip`) `errors`, encoded and timed as the "encode" stage."""
    parsed, model, deadline = await _begin(request, engine, record, fields_type)
    answer = await engine.run(
        model,
        images=parsed.images,
        deadline=deadline,
        outputs=outputs,
        on_error=parsed.fields.on_error,
        disconnected=lambda: client_gone(request),
    )
    start = time.perf_counter()
    payload = {"model": model.name, "fingerprint": model.fingerprint, **fields_of(answer, parsed.fields)}
    if parsed.fields.on_error == "skip":
        payload["errors"] = [{"index": f.index, "detail": f.detail} for f in answer.failures]
    body = encoding.json_bytes(payload)
    metrics.stage_duration.labels(model.name, "encode").observe(time.perf_counter() - start)
    headers = {"X-Fingerprint": model.fingerprint} if fingerprint_header else None
    return Response(body, media_type="application/json", headers=headers)


def _embed_fields(answer: Answer, fields: EmbedFields) -> dict[str, Any]:
    return {
        "dim": answer.model.manifest.embedding_dim,
        "normalized": fields.normalize,
        "embeddings": encoding.embeddings(answer.outputs, fields.normalize, fields.encoding),
    }


def _attention_fields(answer: Answer, fields: AttentionFields) -> dict[str, Any]:
    maps = encoding.attention_maps(answer.outputs)
    found = boxes.boxes(maps, answer.geometries or [None] * len(maps), fields.box_mass)
    return {"grid": list(answer.model.manifest.grid), "attention": maps, "boxes": found}


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
async def embed(request: Request, engine: EngineDep, metrics: MetricsDep, record: RecordDep) -> Response:
    return await _answer(request, engine, metrics, record, EmbedFields, (EMBEDDING,), _embed_fields)


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
    metrics: MetricsDep,
    record: RecordDep,
    format: Annotated[
        Literal["json", "png"], Query(description="`png`: a heat-map overlay (one image).")
    ] = "json",
) -> Response:
    if format == "json":
        fields = AttentionFields
        return await _answer(
            request, engine, metrics, record, fields, (ATTENTION,), _attention_fields, fingerprint_header=True
        )
    parsed, model, deadline = await _begin(request, engine, record, AttentionFields)
    if len(parsed.images) != 1:
        raise EngineError(Kind.INVALID, "format=png takes exactly one image", "malformed")
    body = await engine.attention_png(
        model, parsed.images[0], deadline=deadline, disconnected=lambda: client_gone(request)
    )
    return Response(body, media_type="image/png", headers={"X-Fingerprint": model.fingerprint})


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
async def classify(request: Request, engine: EngineDep, metrics: MetricsDep, record: RecordDep) -> Response:
    return await _answer(request, engine, metrics, record, ClassifyFields, (LOGITS,), _classify_fields)
