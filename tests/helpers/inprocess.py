"""A real uvicorn server on loopback, in a thread of the test process, for apps a test builds itself.

Used where the test must hold a part of the app (a runner that fails on demand): a subprocess
server cannot be reached into. The HTTP path is the real one (sockets, uvicorn, the app's lifespan).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from tests.helpers.process import free_port, wait_ready


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, ready_timeout: float = 120) -> Iterator[str]:
    """Serves `app` on 127.0.0.1 until the block ends; yields its URL once `/readyz` answers 200."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            f"{url}/readyz",
            ready_timeout,
            died=lambda: None if thread.is_alive() else "the in-process server stopped during start-up",
            late=lambda: f"in-process server not ready in {ready_timeout} s",
            interval=0.1,
        )
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
