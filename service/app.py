"""The app factory: `create_app(settings)` wires the doors onto one engine, which the lifespan owns.

Who owns what: the lifespan creates the `Engine` (models, pools, batchers), loads it in the
background and drains it on shutdown; `routes/` translate HTTP to engine calls; `observe` counts and
logs every request; `handlers` turn every error into JSON.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from simpool_serve.service import docs_pages
from simpool_serve.service.engine import Engine
from simpool_serve.service.engine.runner import OnnxRunner, RunnerFactory
from simpool_serve.service.grpc.server import BindError, GrpcServer
from simpool_serve.service.handlers import install_error_handlers
from simpool_serve.service.key_file import KeyFileError, KeyFileWatcher
from simpool_serve.service.keys import KeyRing
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.observe import RequestObserver
from simpool_serve.service.oip import routes as oip
from simpool_serve.service.openai import routes as openai
from simpool_serve.service.routes import ops, rest
from simpool_serve.service.settings import Settings
from simpool_serve.service.tracing import tracing_from_env
from simpool_serve.service.ui import ui_router

log = logging.getLogger("simpool_serve.app")


def create_app(
    settings: Settings,
    on_fatal: Callable[[str], None] | None = None,
    runner_factory: RunnerFactory = OnnxRunner,
    serve_grpc: bool = False,
) -> FastAPI:
    """Builds the app; models load in the background after start-up (`/readyz` says when they are ready).

    `on_fatal` is called if loading fails (the CLI stops the server with exit code 3); without it the
    app stays up, not ready, with the reason in `/readyz`. `runner_factory` opens each graph (a caller
    may wrap the real session, e.g. to inject faults). With `serve_grpc` (the CLI), the lifespan also runs
    the gRPC door on `settings.grpc_port` (unless 0) with the same engine.
    """
    metrics = Metrics(settings.max_batch_size or 32)
    tracing = tracing_from_env()  # None unless OTEL_TRACES_EXPORTER names an exporter
    tracer = tracing.tracer if tracing is not None else None

    async def load(engine: Engine) -> None:
        try:
            await engine.load()
        except Exception as exc:
            # The reason is the message; the traceback helps only someone debugging the service itself.
            log.error(
                "loading the models failed",
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
                extra={"error": engine.load_error},
            )
            if on_fatal is not None:
                on_fatal(engine.load_error or "loading the models failed")

    def key_ring() -> tuple[KeyRing, KeyFileWatcher | None]:
        """The accepted API keys and, with a keys file, its watcher (loaded; started by the caller)."""
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        ring = KeyRing(key, file_configured=settings.api_keys_file is not None)
        if settings.api_keys_file is None:
            return ring, None
        watcher = KeyFileWatcher(settings.api_keys_file, ring)
        try:
            watcher.load()
        except KeyFileError as exc:  # gone or emptied since the CLI's check: nothing to serve with
            if on_fatal is not None:
                on_fatal(str(exc))
            raise
        return ring, watcher

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys, key_watcher = key_ring()
        app.state.keys = keys
        engine = Engine.from_config(settings.engine_config(), metrics, runner_factory, tracer)
        app.state.engine = engine
        grpc_server = None
        if serve_grpc and settings.grpc_port:
            grpc_server = GrpcServer(engine, metrics, keys, settings.host, settings.grpc_port, tracer)
            app.state.grpc_server = grpc_server  # the CLI stops it at the signal, beside uvicorn's drain
            try:
                await grpc_server.start()
            except BindError as exc:  # taken since the CLI's check: as fatal as a busy HTTP port
                await engine.close()
                if on_fatal is not None:
                    on_fatal(str(exc))
                raise
        loader = asyncio.create_task(load(engine), name="load-models")
        if key_watcher is not None:
            key_watcher.start()
        try:
            yield
        finally:
            log.info("shutting down: draining the queues")
            if key_watcher is not None:
                await key_watcher.stop()
            if grpc_server is not None:
                await grpc_server.stop(settings.shutdown_grace_s)
            if not loader.done():
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            await engine.close()
            if tracing is not None:
                tracing.shutdown()  # exports the spans still buffered
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
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(RequestObserver, metrics=metrics)
    if tracer is not None:  # outside the observer, so that its log line knows the trace id
        from simpool_serve.service.http_tracing import TraceMiddleware

        app.add_middleware(TraceMiddleware, tracer=tracer)
    # Each standard door answers errors in its own protocol's shape; REST keeps {"detail": ...}.
    install_error_handlers(app, metrics, {oip.PREFIX: oip.error_shape, openai.PREFIX: openai.error_shape})
    app.include_router(rest.router)
    app.include_router(ops.router)
    app.include_router(ops.probes)
    app.include_router(oip.router)
    app.include_router(oip.probes)
    app.include_router(openai.router)
    app.include_router(docs_pages.docs_router(app.title))
    app.include_router(docs_pages.home_router())
    app.include_router(ui_router())  # the explorer page at /ui
    return app
