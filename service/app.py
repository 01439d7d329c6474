"""The HTTP layer: `create_app(settings)` builds a FastAPI app whose lifespan owns every resource."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simpool_serve.service import docs_pages, encoding
from simpool_serve.service.auth import bearer_auth
from simpool_serve.service.errors import ServiceError
from simpool_serve.service.handlers import install_error_handlers
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.models import default_model, discover, load_all
from simpool_serve.service.observe import RequestObserver
from simpool_serve.service.parsing import (
    AttentionFields,
    AttentionJSON,
    ClassifyFields,
    ClassifyJSON,
    EmbedFields,
    EmbedJSON,
    Fields,
)
from simpool_serve.service.pipeline import Outcome, Service
from simpool_serve.service.schemas import (
    AttentionOut,
    ClassifyOut,
    EmbedOut,
    ErrorOut,
    ModelsOut,
    StatusOut,
    error_responses,
)
from simpool_serve.service.settings import Settings

log = logging.getLogger("simpool_serve.app")

_IMAGE_ERRORS = (400, 401, 404, 413, 415, 422, 500, 503, 504)


def _body_doc(json_model: type[Fields], form_model: type[Fields]) -> dict[str, Any]:
    """The request body in OpenAPI: the endpoint reads it itself, as JSON or as multipart."""
    form = form_model.model_json_schema()
    form["properties"] = {
        "images": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One file part per image, each named `images`.",
        },
        **form.get("properties", {}),
    }
    form["required"] = ["images"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": form},
            },
        }
    }


def _answer(outcome: Outcome, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": outcome.model.name,
        "fingerprint": outcome.model.fingerprint,
        **fields,
    }
    if outcome.fields.on_error == "skip":
        payload["errors"] = [{"index": i, "detail": d} for i, d in outcome.errors]
    return payload


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """Builds the app; models load in the background after start-up (`/readyz` says when they are ready).

    `on_fatal` is called if loading fails (the CLI stops the server with exit code 3); without it the
    app stays up, not ready, with the reason in `/readyz`.
    """
    metrics = Metrics(settings.max_batch_size or 32)

    async def load(service: Service) -> None:
        try:
            await load_all(service.models, settings, metrics)
        except Exception as exc:
            service.load_error = f"{type(exc).__name__}: {exc}"
            # The reason is the message; the traceback helps only someone debugging the service itself.
            log.error(
                "loading the models failed",
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
                extra={"error": service.load_error},
            )
            if on_fatal is not None:
                on_fatal(service.load_error)
            return
        service.loaded = True
        metrics.ready.set(1)
        log.info(
            "ready: every model is loaded and warmed up; serving requests",
            extra={"models": sorted(service.models), "default_model": service.default},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = discover(settings.model_dir)
        service = Service(settings, metrics, models, default_model(models, settings.default_model))
        app.state.service = service
        loader = asyncio.create_task(load(service), name="load-models")
        try:
            yield
        finally:
            log.info("shutting down: draining the queues")
            if not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            metrics.ready.set(0)
            await service.close()
            log.info("stopped")

    app = FastAPI(
        title="SimPool Serve",
        version="0.1.0",
        description="Embeddings, attention maps and classes of SimPool models, with ONNX Runtime.",
        lifespan=lifespan,
        # No 307 from `/embed/` to `/embed`: a client following it would send its (up to 100 MB) body
        # twice. A path with a trailing slash is an unknown path, answered 404 like any other.
        redirect_slashes=False,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: docs_pages serves them itself
        redoc_url=None,
    )
    app.include_router(docs_pages.docs_router(app.title))
    app.include_router(docs_pages.home_router())
    app.add_middleware(RequestObserver, metrics=metrics)
    require_key = bearer_auth(settings.api_key.get_secret_value() if settings.api_key else None)

    def service_of(request: Request) -> Service:
        return request.app.state.service  # type: ignore[no-any-return]

    install_error_handlers(app, metrics)

    # -- image endpoints -------------------------------------------------------------------------

    auth = [Depends(require_key)]

    @app.post(
        "/embed",
        summary="Embed images",
        description="The SimPool embedding of each image, in request order.",
        response_model=EmbedOut,
        response_model_exclude_none=True,
        responses=error_responses(*_IMAGE_ERRORS),
        openapi_extra=_body_doc(EmbedJSON, EmbedFields),
        dependencies=auth,
    )
    async def embed(request: Request) -> Response:
        service = service_of(request)
        outcome = await service.process(request, EmbedFields)
        start = time.perf_counter()
        fields: EmbedFields = outcome.fields  # type: ignore[assignment]
        body = encoding.json_bytes(
            _answer(
                outcome,
                dim=outcome.model.manifest.embedding_dim,
                normalized=fields.normalize,
                embeddings=encoding.embeddings(outcome.results, fields.normalize, fields.encoding),
            )
        )
        metrics.stage_duration.labels(outcome.model.name, "encode").observe(time.perf_counter() - start)
        return Response(body, media_type="application/json")

    @app.post(
        "/attention",
        summary="SimPool attention maps",
        description="Each image's attention over the final feature grid (JSON), or with `format=png` "
        "a heat map over the original photograph, at its original size (one image).",
        response_model=AttentionOut,
        response_model_exclude_none=True,
        responses={
            **error_responses(*_IMAGE_ERRORS),
            200: {"content": {"image/png": {}}, "description": "JSON maps, or a PNG with `format=png`."},
        },
        openapi_extra=_body_doc(AttentionJSON, AttentionFields),
        dependencies=auth,
    )
    async def attention(
        request: Request,
        format: Annotated[
            Literal["json", "png"], Query(description="`png`: a heat-map overlay (one image).")
        ] = "json",
    ) -> Response:
        service = service_of(request)
        png = format == "png"
        outcome = await service.process(request, AttentionFields, overlay=png)
        start = time.perf_counter()
        if png:
            result, ov = outcome.results[0], outcome.overlay
            assert result is not None and ov is not None  # a bad image failed the request already
            loop = asyncio.get_running_loop()
            try:
                body = await loop.run_in_executor(
                    service.decode_pool, encoding.attention_png, ov.original, ov.geometry, result["attention"]
                )
            finally:
                ov.release()
            media = "image/png"
        else:
            grid = list(outcome.model.manifest.grid)
            body = encoding.json_bytes(
                _answer(outcome, grid=grid, attention=encoding.attention_maps(outcome.results))
            )
            media = "application/json"
        metrics.stage_duration.labels(outcome.model.name, "encode").observe(time.perf_counter() - start)
        return Response(body, media_type=media, headers={"X-Fingerprint": outcome.model.fingerprint})

    @app.post(
        "/classify",
        summary="Classify images",
        description="Softmax probabilities of the model's classes, the `top_k` best per image. A model "
        "without a classifier (num_classes 0) answers 422.",
        response_model=ClassifyOut,
        response_model_exclude_none=True,
        responses=error_responses(*_IMAGE_ERRORS),
        openapi_extra=_body_doc(ClassifyJSON, ClassifyFields),
        dependencies=auth,
    )
    async def classify(request: Request) -> Response:
        service = service_of(request)
        outcome = await service.process(request, ClassifyFields, needs_logits=True)
        start = time.perf_counter()
        fields: ClassifyFields = outcome.fields  # type: ignore[assignment]
        preds = encoding.predictions(outcome.results, outcome.model.manifest, fields.top_k)
        body = encoding.json_bytes(_answer(outcome, predictions=preds))
        metrics.stage_duration.labels(outcome.model.name, "encode").observe(time.perf_counter() - start)
        return Response(body, media_type="application/json")

    # -- model listing, probes, metrics ----------------------------------------------------------

    @app.get(
        "/models",
        summary="Served models",
        description="Each model's manifest, whether it is the default, its provider and fingerprint.",
        response_model=ModelsOut,
        responses=error_responses(401, 503),
        dependencies=auth,
    )
    async def models(request: Request) -> Response:
        service = service_of(request)
        reason = service.not_ready_reason()
        if reason is not None:
            raise ServiceError(503, reason, "not_ready", {"Retry-After": "5"})
        listing = [
            {
                **m.manifest.model_dump(mode="json"),
                "name": m.name,
                "default": m.name == service.default,
                "provider": m.runner.provider if m.runner else None,
                "max_batch_size": m.batcher.max_batch_size if m.batcher else None,
                "fingerprint": m.fingerprint,
            }
            for m in service.models.values()
        ]
        return Response(encoding.json_bytes({"models": listing}), media_type="application/json")

    # HEAD as well as GET: load balancers and some probes check with HEAD (same status, no body).
    # The HEAD routes stay out of the OpenAPI schema: one operation id per function, and nothing new to say.
    @app.get("/healthz", summary="Liveness", response_model=StatusOut)
    @app.head("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness",
        description="200 once every model is loaded and warmed up and every batcher runs; 503 otherwise.",
        response_model=StatusOut,
        responses={503: {"model": ErrorOut, "description": "Not ready (loading, or a model stopped)."}},
    )
    @app.head("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        reason = service_of(request).not_ready_reason()
        if reason is not None:
            return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401)},
        dependencies=auth,
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
