"""`simpool-serve`: flags override `SIMPOOL_*` environment variables; SIGTERM drains and exits 0."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from simpool_serve.service import logs
from simpool_serve.service.app import create_app
from simpool_serve.service.settings import Settings

log = logging.getLogger("simpool_serve.cli")

# Like uvicorn: the server could not start serving (unreadable repository, a model that fails to load).
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
    p.add_argument("--default-model", help="model for requests that name none (SIMPOOL_DEFAULT_MODEL)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="SIMPOOL_LOG_LEVEL")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"simpool-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    log.info("open file limit", extra={"nofile": raise_open_file_limit()})
    fatal: list[str] = []
    server: _Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
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
        backlog=settings.backlog,
    )
    server = _Server(config)
    server.run()  # exits with uvicorn's code 3 itself if start-up (reading the repository) fails
    if fatal:
        log.error("exiting: %s", fatal[0])
        return STARTUP_FAILURE
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
