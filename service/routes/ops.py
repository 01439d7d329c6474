"""Operations: the model listing, liveness and readiness probes, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simpool_serve.service import encoding
from simpool_serve.service.engine import not_ready
from simpool_serve.service.routes.deps import Authorized, EngineDep, MetricsDep
from simpool_serve.service.schemas import ErrorOut, ModelsOut, StatusOut, error_responses

router = APIRouter(dependencies=[Authorized])  # the listing and the metrics
probes = APIRouter()  # open, even with an API key: orchestrators probe without one


@router.get(
    "/models",
    summary="Served models",
    description="Each model's manifest, whether it is the default, its provider and fingerprint.",
    response_model=ModelsOut,
    responses=error_responses(401, 503),
)
async def models(engine: EngineDep) -> Response:
    reason = engine.not_ready_reason()
    if reason is not None:
        raise not_ready(reason, retry_after_s=5)
    listing = [
        {
            **m.manifest.model_dump(mode="json"),
            "name": m.name,
            "default": m.name == engine.default,
            "provider": m.provider,
            "max_batch_size": m.batcher.max_batch_size,
            "fingerprint": m.fingerprint,
        }
        for m in engine.models.values()
    ]
    return Response(encoding.json_bytes({"models": listing}), media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401)},
)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# HEAD as well as GET: load balancers and some probes check with HEAD (same status, no body).
# The HEAD routes stay out of the OpenAPI schema: one operation id per function, and nothing new to say.
@probes.get("/healthz", summary="Liveness", response_model=StatusOut)
@probes.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get(
    "/readyz",
    summary="Readiness",
    description="200 once every model is loaded and warmed up and every batcher runs; 503 otherwise.",
    response_model=StatusOut,
    responses={503: {"model": ErrorOut, "description": "Not ready (loading, or a model stopped)."}},
)
@probes.head("/readyz", include_in_schema=False)
async def readyz(engine: EngineDep) -> JSONResponse:
    reason = engine.not_ready_reason()
    if reason is not None:
        return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})
