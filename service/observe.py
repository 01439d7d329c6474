"""Observing requests: one count, one duration and one log line per request, whatever its outcome."""

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simpool_serve.service.metrics import Metrics

log = logging.getLogger("simpool_serve.app")

ENDPOINTS = ("/embed", "/attention", "/classify", "/models", "/healthz", "/readyz", "/metrics")
_QUIET = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes are logged at debug level


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
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            model = state.get("model", "")
            seconds = time.perf_counter() - start
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(seconds)
            log.log(
                logging.DEBUG if endpoint in _QUIET else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "endpoint": endpoint,
                    "model": model,
                    "images": state.get("images", 0),
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
