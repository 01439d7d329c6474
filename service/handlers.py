"""Every error leaves as JSON: the engine's, FastAPI's validation, Starlette's (unknown path, 405).

The status comes from the error's kind (`http_status`: the same for every door); the body's shape is
the door's: `{"detail": ...}` by default, and another for a path prefix given in `shapes`
(an Open Inference Protocol or OpenAI door answers in its own protocol's shape). Failures are counted
by reason under the model the door path labelled (none when it failed before knowing one).
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from simpool_serve.service.engine.errors import EngineError
from simpool_serve.service.http_status import Failure, headers_of, status_of
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.observe import SPAN, labels_of
from simpool_serve.service.refusals import Refusal
from simpool_serve.service.validation import describe

log = logging.getLogger("simpool_serve.app")

# (status, detail, the error or None) → the JSON body of the answer.
ErrorShape = Callable[[int, str, Failure | None], dict[str, Any]]


def detail_shape(status: int, detail: str, error: Failure | None) -> dict[str, Any]:
    return {"detail": detail}


def install_error_handlers(
    app: FastAPI, metrics: Metrics, shapes: Mapping[str, ErrorShape] | None = None
) -> None:
    """Registers the handlers; `shapes` maps a path prefix (e.g. "/v2/") to its error body."""
    by_prefix = dict(shapes or {})

    def answer(
        request: Request,
        status: int,
        detail: str,
        error: Failure | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONResponse:
        path = request.url.path
        shape = next((s for prefix, s in by_prefix.items() if path.startswith(prefix)), detail_shape)
        return JSONResponse(shape(status, detail, error), status_code=status, headers=headers)

    async def on_failure(request: Request, exc: Failure) -> JSONResponse:
        metrics.failures.labels(labels_of(request).model, exc.reason).inc()
        span = request.scope.get(SPAN)  # the server span, when tracing is on
        if span is not None:
            span.record_exception(exc, attributes={"simpool.reason": exc.reason})
        return answer(request, status_of(exc), exc.detail, exc, headers_of(exc))

    app.add_exception_handler(EngineError, on_failure)  # type: ignore[arg-type]
    app.add_exception_handler(Refusal, on_failure)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.failures.labels(labels_of(request).model, "malformed").inc()
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return answer(request, 422, detail or "malformed request")

    @app.exception_handler(ValidationError)
    async def on_pydantic_error(request: Request, exc: ValidationError) -> JSONResponse:
        return answer(request, 422, describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(request, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return answer(request, 500, "internal error; the details are in the server log")
