"""The HTTP protocol without I/O: how a call becomes requests, and how answers become one result.

Both clients execute the same `Operation`s; only the sending loop differs (blocking or
awaiting), so splitting, decoding and error mapping exist once.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx
import numpy as np

from simpool_serve import spec
from simpool_serve.client.errors import ResponseFormatError, SimPoolError
from simpool_serve.client.inputs import ImageInput, size_hint, to_base64
from simpool_serve.client.results import (
    AttentionResult,
    ClassifyResult,
    EmbedResult,
    ImageFailure,
    ModelInfo,
    Prediction,
)

T = TypeVar("T")
OnError = Literal["fail", "skip"]


def _env_limit(name: str, default: int) -> int:
    """The server's limit if this environment sets it (client and server often share one), or the
    service's own default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {raw!r}")
    return value


def default_max_images_per_request() -> int:
    return _env_limit("SIMPOOL_MAX_IMAGES_PER_REQUEST", spec.MAX_IMAGES_PER_REQUEST)


def default_max_request_bytes() -> int:
    return _env_limit("SIMPOOL_MAX_REQUEST_BYTES", spec.MAX_REQUEST_BYTES)


def plan_chunks(sizes: Sequence[int], max_images: int, max_bytes: int) -> list[int]:
    """Start offsets of requests holding at most `max_images` images and, as JSON, at most `max_bytes`
    (base64 grows 4/3); an image too large on its own goes alone, for the server to name it."""
    offsets: list[int] = []
    count = used = 0
    for i, size in enumerate(sizes):
        need = (size + 2) // 3 * 4 + 8
        if not offsets or count == max_images or used + need > max_bytes - 1024:
            offsets.append(i)
            count = used = 0
        count += 1
        used += need
    return offsets


@dataclass(frozen=True)
class Request:
    """One HTTP request of an operation; `images` are encoded only when it is sent, to bound memory."""

    method: Literal["GET", "POST"]
    path: str
    images: Sequence[ImageInput] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] | None = None

    def json_body(self) -> dict[str, Any] | None:
        if self.method == "GET":
            return None
        return {"images": [to_base64(img) for img in self.images], **self.fields}


@dataclass(frozen=True)
class Operation(Generic[T]):
    """Requests to send (in any order, possibly concurrently) and how to combine their answers."""

    requests: list[Request]
    finish: Callable[[list[httpx.Response]], T]


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ResponseFormatError(f"{response.request.url.path}: answer is not JSON") from exc
    if not isinstance(body, dict):
        raise ResponseFormatError(f"{response.request.url.path}: answer is not a JSON object")
    return body


def _common(bodies: list[dict[str, Any]], offsets: list[int]) -> tuple[str, str, tuple[ImageFailure, ...]]:
    """Model, fingerprint and re-indexed errors of a split call; a fingerprint change mid-call is an error."""
    fingerprints = {b.get("fingerprint") for b in bodies}
    if len(fingerprints) > 1:
        raise SimPoolError(
            "the model changed while this call was split across requests"
            f" (fingerprints {sorted(fingerprints)}); repeat the call"
        )
    errors = tuple(
        ImageFailure(index=offset + int(e["index"]), detail=str(e.get("detail", "")))
        for body, offset in zip(bodies, offsets, strict=True)
        for e in body.get("errors") or []
    )
    first = bodies[0] if bodies else {}
    return str(first.get("model", "")), str(first.get("fingerprint", "")), errors


def _vector(entry: Any, dim: int) -> np.ndarray:
    if entry is None:
        return np.full(dim, np.nan, np.float32)
    if isinstance(entry, str):
        vec = np.frombuffer(base64.b64decode(entry), dtype="<f4").astype(np.float32)
    else:
        vec = np.asarray(entry, dtype=np.float32)
    if vec.shape != (dim,):
        raise ResponseFormatError(f"embedding of length {vec.size}, expected {dim}")
    return vec


def descriptor_fields(
    view: str | None,
    size: int | None,
    scales: Sequence[float] | None,
    region: Sequence[float] | str | None,
    whiten: bool | None,
    dimensions: int | None,
) -> dict[str, Any]:
    """The retrieval descriptor's fields a caller set (docs/retrieval.md); unset ones stay the
    server's defaults."""
    given = {
        "view": view,
        "size": size,
        "scales": list(scales) if scales is not None else None,
        "region": list(region) if region is not None and not isinstance(region, str) else region,
        "whiten": whiten,
        "dimensions": dimensions,
    }
    return {k: v for k, v in given.items() if v is not None}


class Protocol:
    """Plans operations for one service: the settings every request shares."""

    def __init__(
        self, *, model: str | None, max_images_per_request: int | None, max_request_bytes: int | None = None
    ) -> None:
        self.model = model
        self.max_images = max_images_per_request or default_max_images_per_request()
        self.max_bytes = max_request_bytes or default_max_request_bytes()
        if self.max_images < 1 or self.max_bytes < 1:
            raise ValueError("max_images_per_request and max_request_bytes must be >= 1")

    def _split(self, images: Sequence[ImageInput]) -> tuple[list[Sequence[ImageInput]], list[int]]:
        if isinstance(images, str | bytes | os.PathLike | np.ndarray) or not isinstance(images, Sequence):
            raise TypeError("pass a list of images (wrap a single image in a list)")
        if not images:
            raise ValueError("no images given")
        offsets = plan_chunks([size_hint(img) for img in images], self.max_images, self.max_bytes)
        ends = [*offsets[1:], len(images)]
        return [images[a:b] for a, b in zip(offsets, ends, strict=True)], offsets

    def _fields(self, model: str | None, **extra: Any) -> dict[str, Any]:
        chosen = model or self.model
        return {**({"model": chosen} if chosen else {}), **extra}

    def embed(
        self,
        images: Sequence[ImageInput],
        model: str | None,
        normalize: bool,
        on_error: OnError,
        descriptor: Mapping[str, Any] | None = None,
    ) -> Operation[EmbedResult]:
        chunks, offsets = self._split(images)
        fields = self._fields(model, normalize=normalize, encoding="base64", on_error=on_error)
        fields.update({k: v for k, v in (descriptor or {}).items() if v is not None})

        def finish(responses: list[httpx.Response]) -> EmbedResult:
            bodies = [_json(r) for r in responses]
            model_name, fp, errors = _common(bodies, offsets)
            dim = int(bodies[0]["dim"])
            rows = [_vector(e, dim) for b in bodies for e in b["embeddings"]]
            if len(rows) != len(images):
                raise ResponseFormatError(f"{len(rows)} embeddings for {len(images)} images")
            return EmbedResult(
                model=model_name,
                fingerprint=fp,
                errors=errors,
                embeddings=np.stack(rows).astype(np.float32, copy=False),
                normalized=bool(bodies[0].get("normalized", normalize)),
            )

        return Operation([Request("POST", "/embed", c, fields) for c in chunks], finish)

    def attention(
        self,
        images: Sequence[ImageInput],
        model: str | None,
        on_error: OnError,
        box_mass: float | None = None,
    ) -> Operation:
        chunks, offsets = self._split(images)
        fields = self._fields(
            model, on_error=on_error, **({} if box_mass is None else {"box_mass": box_mass})
        )

        def finish(responses: list[httpx.Response]) -> AttentionResult:
            bodies = [_json(r) for r in responses]
            model_name, fp, errors = _common(bodies, offsets)
            h, w = (int(x) for x in bodies[0]["grid"])
            maps = [
                np.full((h, w), np.nan, np.float32) if a is None else np.asarray(a, np.float32).reshape(h, w)
                for b in bodies
                for a in b["attention"]
            ]
            boxes = [
                None if x is None else tuple(int(v) for v in x)
                for b in bodies
                for x in b.get("boxes") or [None] * len(b["attention"])  # a server from before boxes
            ]
            return AttentionResult(
                model=model_name,
                fingerprint=fp,
                errors=errors,
                attention=np.stack(maps),
                grid=(h, w),
                boxes=boxes,  # type: ignore[arg-type]
            )

        return Operation([Request("POST", "/attention", c, fields) for c in chunks], finish)

    def attention_png(self, image: ImageInput, model: str | None) -> Operation[bytes]:
        req = Request("POST", "/attention", [image], self._fields(model), params={"format": "png"})
        return Operation([req], lambda responses: responses[0].content)

    def classify(
        self, images: Sequence[ImageInput], model: str | None, top_k: int, on_error: OnError
    ) -> Operation[ClassifyResult]:
        chunks, offsets = self._split(images)
        fields = self._fields(model, top_k=top_k, on_error=on_error)

        def finish(responses: list[httpx.Response]) -> ClassifyResult:
            bodies = [_json(r) for r in responses]
            model_name, fp, errors = _common(bodies, offsets)
            preds = [
                None
                if p is None
                else [Prediction(int(x["index"]), x.get("label"), float(x["score"])) for x in p]
                for b in bodies
                for p in b["predictions"]
            ]
            return ClassifyResult(model=model_name, fingerprint=fp, errors=errors, predictions=preds)

        return Operation([Request("POST", "/classify", c, fields) for c in chunks], finish)

    def models(self) -> Operation[list[ModelInfo]]:
        return Operation(
            [Request("GET", "/models")],
            lambda responses: [ModelInfo.from_json(m) for m in _json(responses[0])["models"]],
        )


def headers(api_key: str | None) -> dict[str, str]:
    """The service takes its key as `Authorization: Bearer <key>` (as TEI and OpenAI-style APIs do);
    with no key given, $SIMPOOL_API_KEY is used, so every client and the CLI default alike."""
    key = api_key if api_key is not None else os.environ.get("SIMPOOL_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}
