"""HTTP's side of the door path: the body reader every HTTP door uses, the client-gone signal, and
`serve_http`, which runs a door for one HTTP request with the request's labels and disconnect."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

from simpool_serve.service.door import Door, serve
from simpool_serve.service.engine import Engine, EngineError, Kind, Limits
from simpool_serve.service.observe import label_request

Req = TypeVar("Req")
Res = TypeVar("Res")


async def read_body(request: Request, limits: Limits, deadline: float | None = None) -> bytes:
    """The whole body, refused (TOO_LARGE) as soon as it passes the limit, declared or streamed.

    `deadline` (event-loop time) bounds the upload too: a client that trickles its body (by accident,
    or to hold a connection and its buffers) gets TIMEOUT when the request's deadline passes.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        limits.check_body(int(declared), declared=True)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                limits.check_body(size)
                chunks.append(chunk)
    except ClientDisconnect as exc:
        raise EngineError(
            Kind.DISCONNECTED, "client closed the connection while sending", "disconnected"
        ) from exc
    except TimeoutError:
        raise EngineError(
            Kind.TIMEOUT,
            f"request body not received in time ({size} bytes by the request deadline)",
            "timeout",
        ) from None
    return b"".join(chunks)


async def client_gone(request: Request) -> None:
    """Returns when the client goes away (only once the body has been read: the next message is then
    the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def serve_http(request: Request, engine: Engine, door: Door[Req, Res]) -> Res:
    """`serve` for one HTTP request: its labels go to the request's metrics and log line."""

    def label(model: str, images: int, fingerprint: str) -> None:
        label_request(request, model, images, fingerprint)

    return await serve(engine, door, label=label, disconnected=lambda: client_gone(request))
