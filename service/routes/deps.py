"""What a route gets from the app, as FastAPI dependencies: the engine, the metrics, the settings.

    async def route(engine: EngineDep) -> ...

Each is `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per
dependency per request (as `def`, they cost the event loop 2.27 instead of 1.92 ms of CPU per
image at 32 clients, plus the worker thread's own).

The app's lifespan creates the engine (`app.state.engine`); `create_app` the metrics and settings.
"""

from typing import Annotated

from fastapi import Depends, Request

from simpool_serve.service.auth import require_key, settings_of
from simpool_serve.service.engine import Engine
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.settings import Settings


async def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


EngineDep = Annotated[Engine, Depends(engine_of)]
MetricsDep = Annotated[Metrics, Depends(metrics_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
# For a router's `dependencies=`: 401 without the API key (when one is set).
Authorized = Depends(require_key)
