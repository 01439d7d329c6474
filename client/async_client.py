"""Asyncio client: the same operations as `SimPoolClient`, with a split call's requests in flight together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from simpool_serve.client.inputs import ImageInput
from simpool_serve.client.protocol import OnError, Operation, Protocol, Request, descriptor_fields, headers
from simpool_serve.client.results import AttentionResult, ClassifyResult, EmbedResult, ModelInfo
from simpool_serve.client.retry import DEFAULT_CONNECT_TIMEOUT, RetryPolicy, RetryState
from simpool_serve.client.sync_client import DEFAULT_URL

T = TypeVar("T")


class AsyncSimPoolClient:
    """Like `SimPoolClient`; `max_concurrency` caps requests in flight across all calls on this client,
    so a large call cannot flood the service's queue (it would answer 503 and make everyone wait)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        max_images_per_request: int | None = None,
        max_request_bytes: int | None = None,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry: RetryPolicy | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._protocol = Protocol(
            model=model, max_images_per_request=max_images_per_request, max_request_bytes=max_request_bytes
        )
        self._retry = retry or RetryPolicy()
        self._slots = asyncio.Semaphore(max_concurrency)
        limits = httpx.Limits(max_connections=max_concurrency + 2, max_keepalive_connections=max_concurrency)
        httpx_kwargs.setdefault("limits", limits)
        self._http = httpx.AsyncClient(
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

    async def __aenter__(self) -> AsyncSimPoolClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: Request) -> httpx.Response:
        async with self._slots:
            body = await asyncio.to_thread(request.json_body)  # file reads and base64 off the event loop
            state = RetryState(self._retry, self._url, self._reached)
            while True:
                try:
                    response = await self._http.request(
                        request.method, request.path, json=body, params=request.params
                    )
                except httpx.TransportError as exc:
                    wait: float | None = state.after_exception(exc)
                else:
                    self._reached = True
                    wait = state.after_response(response)
                    if wait is None:
                        return response
                await asyncio.sleep(wait)

    async def _run(self, op: Operation[T]) -> T:
        return op.finish(list(await asyncio.gather(*(self._send(r) for r in op.requests))))

    async def embed(
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
        return await self._run(
            self._protocol.embed(
                images,
                model,
                normalize,
                on_error,
                descriptor_fields(view, size, scales, region, whiten, dimensions),
            )
        )

    async def attention(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        on_error: OnError = "fail",
        box_mass: float | None = None,
    ) -> AttentionResult:
        return await self._run(self._protocol.attention(images, model, on_error, box_mass))

    async def attention_png(self, image: ImageInput, *, model: str | None = None) -> bytes:
        return await self._run(self._protocol.attention_png(image, model))

    async def classify(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        top_k: int = 5,
        on_error: OnError = "fail",
    ) -> ClassifyResult:
        return await self._run(self._protocol.classify(images, model, top_k, on_error))

    async def models(self) -> list[ModelInfo]:
        return await self._run(self._protocol.models())

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False
