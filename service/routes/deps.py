"""What a route gets from the app, as FastAPI dependencies: the engine, the metrics, its request record.

    async def route(engine: EngineDep, record: RecordDep) -> ...

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
from simpool_serve.service.observe import RequestRecord, request_record
from simpool_serve.service.settings import Settings


async def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def client_gone(request: Request) -> None:
    """Returns when the client goes away, for `Engine.run(disconnected=lambda: client_gone(request))`.

    Only once the body has been read: the next message is then the disconnect.
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


EngineDep = Annotated[Engine, Depends(engine_of)]
MetricsDep = Annotated[Metrics, Depends(metrics_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
RecordDep = Annotated[RequestRecord, Depends(request_record)]
# For a router's `dependencies=`: 401 without the API key (when one is set).
Authorized = Depends(require_key)
