"""Response shapes, for the OpenAPI docs at /docs (answers are encoded directly, not through these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    detail: str = Field(description="What was wrong, naming the image index where one image is at fault.")


class ImageErrorOut(BaseModel):
    index: int = Field(description="Position of the image in the request (from 0).")
    detail: str


class Answer(BaseModel):
    model: str = Field(description="The model that answered.")
    fingerprint: str = Field(description="Hash of the graph and its preprocessing; changes when answers may.")
    errors: list[ImageErrorOut] | None = Field(
        None, description="Only with `on_error=skip`: the images answered with `null`, and why."
    )


class EmbedOut(Answer):
    dim: int
    normalized: bool
    embeddings: list[list[float] | str | None] = Field(
        description="One per image, in request order: floats, or base64 of little-endian float32."
    )


class AttentionOut(Answer):
    grid: tuple[int, int] | list[tuple[int, int] | None] = Field(
        description="[h, w] of each map; with `view=full`, one [h, w] per image (its own aspect ratio)."
    )
    attention: list[list[list[float]] | None] = Field(description="One h×w map per image; each sums to 1.")
    boxes: list[tuple[int, int, int, int] | None] = Field(
        description="Per image, [x0, y0, x1, y1] in the upright original's pixels (x1, y1 exclusive): "
        "the smallest box around the main connected region holding the top `box_mass` of the attention."
    )


class Prediction(BaseModel):
    index: int
    label: str
    score: float = Field(description="Softmax probability.")


class ClassifyOut(Answer):
    predictions: list[list[Prediction] | None] = Field(
        description="Per image, the top_k classes, best first."
    )


class ModelOut(BaseModel):
    """The model's manifest (every field the exporter wrote) plus how this server runs it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    default: bool
    provider: str = Field(description="The ONNX Runtime execution provider in use.")
    fingerprint: str


class ModelsOut(BaseModel):
    models: list[ModelOut]


class StatusOut(BaseModel):
    status: str


_ERRORS: dict[int, str] = {
    400: "An image (or its base64 / data URI) could not be decoded; the detail names its index.",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`), when the server has one.",
    404: "Unknown model.",
    413: "Too many images, bytes or pixels.",
    415: "Content type other than application/json or multipart/form-data.",
    422: "Malformed body or parameter (bad JSON, a field of the wrong JSON type, an empty `model`), "
    "or `/classify` on a model without a classifier.",
    500: "Inference failed; the details are in the server log.",
    503: "Queue full or not ready yet; retry after `Retry-After` seconds.",
    504: "The request deadline (`SIMPOOL_REQUEST_TIMEOUT_S`) passed.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in codes}
