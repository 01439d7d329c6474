"""OpenAI's embeddings API, as pydantic models: requests are validated with them, answers documented."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

_INPUT_DOC = (
    "An encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF) as a data URI or plain base64, or a list of them."
)


class EmbeddingsRequest(BaseModel):
    # `user` and future fields of OpenAI's API are accepted and ignored, as other compatible servers do.
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = Field(None, min_length=1, description="Model name (see `/v1/models`); default model.")
    # Token arrays are accepted here only to be refused with a useful message (the models embed images).
    input: str | list[str] | list[int] | list[list[int]] = Field(description=_INPUT_DOC)
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: little-endian float32 (OpenAI's SDK asks for it by default)."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Keep this many whitened components (needs the model's fitted whitening)."
    )
    # The retrieval descriptor's other fields, as extra body fields (docs/retrieval.md).
    view: Literal["crop", "full"] = Field("crop", description="`full`: the whole image at its aspect ratio.")
    size: int | None = Field(None, ge=32, description="Longer side of a `full` view.")
    scales: list[Annotated[float, Field(strict=False)]] | None = Field(
        None, description="Scales averaged into one descriptor."
    )
    region: list[Annotated[float, Field(strict=False)]] | Literal["attention"] | None = Field(
        None, description="[x0, y0, x1, y1], or `attention`: cut each image to this box first."
    )
    whiten: bool = Field(False, description="Apply the model's fitted whitening.")


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: Usage
    fingerprint: str


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorOut(BaseModel):
    error: ErrorDetail
