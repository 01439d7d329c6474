"""Every error leaves as JSON `{"detail": "..."}`: the service's own, FastAPI's validation, Starlette's."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from simpool_serve.service.errors import ServiceError
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.parsing import describe

log = logging.getLogger("simpool_serve.app")


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Registers the handlers; failures are counted by reason under the request's model (if known)."""

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.failures.labels(getattr(request.state, "model", ""), exc.reason).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.failures.labels(getattr(request.state, "model", ""), "malformed").inc()
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return JSONResponse({"detail": detail or "malformed request"}, status_code=422)

    @app.exception_handler(ValidationError)
    async def on_pydantic_error(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error; the details are in the server log"}, status_code=500)
