"""Blocking client: one pooled httpx connection set, requests of a split call sent one after another."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from simpool_serve.client.inputs import ImageInput
from simpool_serve.client.protocol import OnError, Operation, Protocol, Request, descriptor_fields, headers
from simpool_serve.client.results import AttentionResult, ClassifyResult, EmbedResult, ModelInfo
from simpool_serve.client.retry import DEFAULT_CONNECT_TIMEOUT, RetryPolicy, RetryState

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"


class SimPoolClient:
    """Talks to one simpool-serve; use as a context manager (or call `close`) to release connections.

    `api_key` defaults to $SIMPOOL_API_KEY; large calls are split into requests of at most
    `max_images_per_request` images and `max_request_bytes` bytes (defaults: $SIMPOOL_MAX_IMAGES_PER_REQUEST
    and $SIMPOOL_MAX_REQUEST_BYTES, else the service's defaults, 64 and 100 MiB); `timeout` is per HTTP
    request, `connect_timeout` (5 s) the wait for a connection, `retry` bounds the waiting on 503s and
    lost connections. Where nothing listens at `base_url`, the first call fails at once.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        max_images_per_request: int | None = None,
        max_request_bytes: int | None = None,
        timeout: float = 60.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry: RetryPolicy | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        self._protocol = Protocol(
            model=model, max_images_per_request=max_images_per_request, max_request_bytes=max_request_bytes
        )
        self._retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers=headers(api_key),
            **httpx_kwargs,
        )
        self._url = str(self._http.base_url).rstrip("/")
        self._reached = False  # an answer came once: a refused connection later is a restart

    @property
    def max_images_per_request(self) -> int:
        return self._protocol.max_images

    def __enter__(self) -> SimPoolClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: Request) -> httpx.Response:
        body = request.json_body()
        state = RetryState(self._retry, self._url, self._reached)
        while True:
            try:
                response = self._http.request(request.method, request.path, json=body, params=request.params)
            except httpx.TransportError as exc:
                wait: float | None = state.after_exception(exc)
            else:
                self._reached = True
                wait = state.after_response(response)
                if wait is None:
                    return response
            time.sleep(wait)

    def _run(self, op: Operation[T]) -> T:
        return op.finish([self._send(r) for r in op.requests])

    def embed(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        normalize: bool = True,
        on_error: OnError = "fail",
        view: Literal["crop", "full"] | None = None,
        size: int | None = None,
        scales: Sequence[float] | None = None,
        region: Sequence[float] | Literal["attention"] | None = None,
        whiten: bool | None = None,
        dimensions: int | None = None,
    ) -> EmbedResult:
        """Embeddings [N, D] (L2-normalised unless `normalize=False`) in input order.

        `view`, `size`, `scales`, `region`, `whiten` and `dimensions` ask for a retrieval descriptor
        (docs/retrieval.md): `view="full", scales=[1, 0.7071, 0.5]` is the paper's protocol. The
        result's `fingerprint` then names that descriptor."""
        return self._run(
            self._protocol.embed(
                images,
                model,
                normalize,
                on_error,
                descriptor_fields(view, size, scales, region, whiten, dimensions),
            )
        )

    def attention(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        on_error: OnError = "fail",
        box_mass: float | None = None,
    ) -> AttentionResult:
        """SimPool attention maps [N, h, w] over the final feature grid, and the box around each one's
        main region holding `box_mass` of it (the server's default, 0.6, when None)."""
        return self._run(self._protocol.attention(images, model, on_error, box_mass))

    def attention_png(self, image: ImageInput, *, model: str | None = None) -> bytes:
        """A PNG heat-map overlay of one image's attention, as the service renders it."""
        return self._run(self._protocol.attention_png(image, model))

    def classify(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        top_k: int = 5,
        on_error: OnError = "fail",
    ) -> ClassifyResult:
        """Top-k softmax predictions per image (models with a classifier only)."""
        return self._run(self._protocol.classify(images, model, top_k, on_error))

    def models(self) -> list[ModelInfo]:
        return self._run(self._protocol.models())

    def healthy(self) -> bool:
        """True while the process answers /healthz (no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """True once every model is loaded and warmed (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
