"""`simpool-serve`: flags override `SIMPOOL_*` environment variables; SIGTERM drains and exits 0."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from simpool_serve.service import logs, preflight
from simpool_serve.service.app import create_app
from simpool_serve.service.settings import Settings

log = logging.getLogger("simpool_serve.cli")

# Exit codes (docs/service.md): a flag or SIMPOOL_* value of the wrong type or out of range; and, as
# uvicorn's, the server could not start serving (repository, default model, provider, port, a model load).
INVALID_SETTINGS = 2
STARTUP_FAILURE = 3


class _Server(uvicorn.Server):
    """uvicorn's server, except that a handled SIGTERM/SIGINT ends the process normally (exit 0).

    uvicorn re-raises the signal after its graceful shutdown, which would make the exit status -15;
    an orchestrator should see a clean exit once every accepted request was answered.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's drain, with the gRPC door's in parallel: both stop taking new calls at the signal
        and share one grace period (in sequence they could outlast the orchestrator's)."""
        grpc_server = getattr(getattr(self.config.app, "state", None), "grpc_server", None)
        grace = self.config.timeout_graceful_shutdown or 0
        stopping = asyncio.ensure_future(grpc_server.stop(grace)) if grpc_server is not None else None
        try:
            await super().shutdown(sockets)
        finally:
            if stopping is not None:
                await stopping

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        log.info("signal received: finishing accepted requests", extra={"signal": signal.Signals(sig).name})
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def raise_open_file_limit() -> int:
    """Lifts this process's soft limit on open files to its hard limit, and returns it.

    Every connection is a file descriptor; the usual soft limit (1024) would make the server stop
    accepting at about a thousand idle keep-alive clients while the hard limit allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="simpool-serve",
        description="Serve every model under a model directory (NAME/model.onnx + NAME/manifest.json). "
        "Every setting is also an environment variable SIMPOOL_<NAME>; flags win.",
    )
    p.add_argument("--model-dir", type=Path, help="model repository (SIMPOOL_MODEL_DIR)")
    p.add_argument("--host", help="address to listen on (SIMPOOL_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (SIMPOOL_PORT, default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (SIMPOOL_GRPC_PORT, default 8001; 0: no gRPC)")
    p.add_argument("--default-model", help="model for requests that name none (SIMPOOL_DEFAULT_MODEL)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="SIMPOOL_LOG_LEVEL")
    return p.parse_args(argv)


def _wants_debug(args: argparse.Namespace) -> bool:
    """Whether tracebacks are wanted, known before the settings are (they may be what failed)."""
    level = args.log_level or os.environ.get("SIMPOOL_LOG_LEVEL", "")
    return level.lower() == "debug"


def _fail(message: str, code: int, exc: BaseException, debug: bool) -> int:
    """One line on stderr naming what to change; the traceback only with --log-level debug."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"simpool-serve: error: {message}", file=sys.stderr)
    return code


class _StartupLines(logging.Filter):
    """Drops uvicorn's "Application startup complete.": here the models load after it, so it would
    read as "ready" a minute early. The service's own lines say when loading starts and ends."""

    _DROPPED = frozenset({"Waiting for application startup.", "Application startup complete."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self._DROPPED


def _announce(settings: Settings, sock: socket.socket, models: list[str], untrained: list[str]) -> None:
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    log.info(
        f"listening on {url}; loading {len(models)} model(s): {', '.join(models)} "
        "(/readyz answers 503 until every model is loaded and warmed up)",
        extra={"url": url, "model_dir": str(settings.model_dir), "models": models},
    )
    for name in untrained:
        log.warning(
            f"model {name} has random weights (exported with --random-init): its embeddings, attention "
            "maps and classes are meaningless; export a checkpoint for real answers (see README)",
            extra={"model": name, "weights": "random"},
        )
    if untrained and preflight.exposed(settings):
        log.warning(
            f"UNTRAINED MODELS ON EVERY NETWORK INTERFACE WITHOUT AN API KEY: anyone who reaches port "
            f"{port} gets meaningless answers from {', '.join(untrained)}; listen on --host 127.0.0.1 "
            "or set SIMPOOL_API_KEY",
            extra={"models": untrained, "host": settings.host},
        )


def _serve(settings: Settings, sock: socket.socket) -> int:
    """Runs uvicorn on the socket until a signal (0) or a model that fails to load (3)."""
    # Here, after the start-up checks: a refused start says one line and nothing else.
    log.info("open file limit", extra={"nofile": raise_open_file_limit()})
    fatal: list[str] = []
    server: _Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal, serve_grpc=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Not int(): a grace under 1 s would become 0, and uvicorn would cancel every accepted request.
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        server_header=False,
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections or None,
    )
    server = _Server(config)
    server.run(sockets=[sock])
    if fatal:
        print(f"simpool-serve: error: {fatal[0]}", file=sys.stderr)
        return STARTUP_FAILURE
    return 0 if server.started else STARTUP_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    debug = _wants_debug(args)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        return _fail(preflight.settings_error(exc), INVALID_SETTINGS, exc, debug)
    logs.configure(settings.log_level)
    logging.getLogger("uvicorn.error").addFilter(_StartupLines())
    try:
        control = settings.model_control
        models = preflight.check_repository(settings.model_dir, control, settings.load_models)
        preflight.check_default_model(models, settings.default_model, control, settings.model_dir)
        preflight.check_providers(settings.providers)
        preflight.check_api_keys_file(settings.api_keys_file)
        preflight.check_tracing()
        sock = preflight.listen(settings.host, settings.port, settings.backlog)
        try:
            preflight.check_grpc_port(settings.host, settings.grpc_port)
        except preflight.ConfigError:
            sock.close()
            raise
    except preflight.ConfigError as exc:
        return _fail(str(exc), STARTUP_FAILURE, exc, debug)
    _announce(settings, sock, sorted(models), preflight.untrained(models))

    with sock:  # closed however the server ends (or fails to be built)
        return _serve(settings, sock)


if __name__ == "__main__":
    sys.exit(main())
