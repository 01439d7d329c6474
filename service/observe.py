"""Observing requests: one count, one duration and one log line per request, whatever its outcome.

The `endpoint` label is the path template of the route that answered ("other" for an unknown path),
so every door's routes are labelled without a list to keep in step. What only the door path learns
(the model, the number of images) it reports once, with `label_request`; the middleware and the
error handlers read those `RequestLabels` back (empty when the request failed before naming a model).
The API-key check reports the name of the key a request sent, with `label_key` (`none` when the
request sent no accepted key, or needed none): the count and the log line carry the name, never the key.
"""

import logging
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simpool_serve.service.keys import NO_KEY
from simpool_serve.service.metrics import Metrics

log = logging.getLogger("simpool_serve.app")

_QUIET = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes are logged at debug level
_LABELS = "simpool.labels"  # the scope key of a request's labels
_KEY = "simpool.key"  # ... and of the name of its API key


@dataclass(frozen=True, slots=True)
class RequestLabels:
    """The labels of one request that only the door path knows: the model that answered, its images."""

    model: str = ""
    images: int = 0
    fingerprint: str = ""


_UNLABELLED = RequestLabels()
TRACE_ID = "simpool.trace_id"  # the scope key of a traced request's trace id (hex), for its log line
SPAN = "simpool.span"  # ... and of its server span, on which the error handlers record failures


def label_request(conn: HTTPConnection, model: str, images: int, fingerprint: str) -> None:
    """The door path's report of which model the request went to, with how many images."""
    conn.scope[_LABELS] = RequestLabels(model, images, fingerprint)


def label_key(conn: HTTPConnection, name: str) -> None:
    """The API-key check's report of which key (by name) the request was let in with."""
    conn.scope[_KEY] = name


def labels_of(conn: HTTPConnection) -> RequestLabels:
    return labels_of_scope(conn.scope)


def labels_of_scope(scope: Scope) -> RequestLabels:
    labels: RequestLabels = scope.get(_LABELS, _UNLABELLED)
    return labels


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
            record = labels_of_scope(scope)
            key = scope.get(_KEY, NO_KEY)
            self.metrics.requests.labels(endpoint, record.model, str(status), key).inc()
            self.metrics.request_duration.labels(endpoint).observe(seconds)
            extra = {
                "method": scope["method"],
                "endpoint": endpoint,
                "model": record.model,
                "images": record.images,
                "status": status,
                "key": key,
                "duration_ms": round(seconds * 1000, 2),
            }
            if TRACE_ID in scope:
                extra["trace_id"] = scope[TRACE_ID]
            log.log(logging.DEBUG if endpoint in _QUIET else logging.INFO, "request", extra=extra)
