"""Observing requests: one count, one duration and one log line per request, whatever its outcome.

The `endpoint` label is the path template of the route that answered ("other" for an unknown path),
so every door's routes are labelled without a list to keep in step. What only the route learns (the
model, the number of images) it writes into the request's `RequestRecord` (the `RecordDep`
dependency); the middleware reads it back when the answer has gone out.
"""

import logging
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simpool_serve.service.metrics import Metrics

log = logging.getLogger("simpool_serve.app")

_QUIET = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes are logged at debug level
_RECORD = "simpool.record"  # the scope key of a request's record


@dataclass(slots=True)
class RequestRecord:
    """The labels of one request that only its route knows: the model that answered, how many images."""

    model: str = ""
    images: int = 0


def record_of(conn: HTTPConnection) -> RequestRecord:
    """The request's record: routes write the model and image count into it."""
    record: RequestRecord = conn.scope[_RECORD]
    return record


async def request_record(conn: HTTPConnection) -> RequestRecord:
    """`record_of` as a dependency (async: FastAPI runs a plain `def` dependency in a worker thread)."""
    return record_of(conn)


class RequestObserver:
    """ASGI middleware: counts, times and logs every request once, whatever its outcome."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        record = scope[_RECORD] = RequestRecord()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope.get("route")  # set by the router on the route that matched
            endpoint = getattr(route, "path", None) or "other"
            seconds = time.perf_counter() - start
            self.metrics.requests.labels(endpoint, record.model, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(seconds)
            log.log(
                logging.DEBUG if endpoint in _QUIET else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "endpoint": endpoint,
                    "model": record.model,
                    "images": record.images,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
