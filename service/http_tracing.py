"""The HTTP doors' server span, added to the app only when tracing is on.

Each request's span continues the caller's trace (W3C `traceparent` / `tracestate`, through the
globally configured propagators), is current while the app handles the request (so the engine's
spans are its children), and carries the route, the status and the door path's labels
(`simpool.model`, `simpool.fingerprint`, `simpool.images`). Errors the handlers answer are recorded on
it by `handlers.py` through the scope.
"""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, format_trace_id
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simpool_serve.service.observe import SPAN, TRACE_ID, labels_of_scope


class TraceMiddleware:
    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        status = 500

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            method, context=propagate.extract(carrier), kind=SpanKind.SERVER
        ) as span:
            scope[SPAN] = span
            scope[TRACE_ID] = format_trace_id(span.get_span_context().trace_id)
            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                span.update_name(f"{method} {route}" if route else method)
                span.set_attribute("http.request.method", method)
                span.set_attribute("url.path", scope.get("path", ""))
                span.set_attribute("http.response.status_code", status)
                if route:
                    span.set_attribute("http.route", route)
                labels = labels_of_scope(scope)
                if labels.model:
                    span.set_attribute("simpool.model", labels.model)
                    span.set_attribute("simpool.fingerprint", labels.fingerprint)
                    span.set_attribute("simpool.images", labels.images)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
