"""Code the tests share (imported as `tests.helpers`), kept apart from conftest's fixtures.

Each concern has its module; the names most tests use are re-exported here.
"""

from tests.helpers.photos import write_photos
from tests.helpers.process import (
    BIN,
    REPO_ROOT,
    free_port,
    run_export,
    run_exports,
    running_process,
    wait_ready,
)
from tests.helpers.server import DOOR_KEY, SMALL_MODELS, Server, start_server
from tests.helpers.vectors import cosine

__all__ = [
    "BIN",
    "DOOR_KEY",
    "REPO_ROOT",
    "SMALL_MODELS",
    "Server",
    "cosine",
    "free_port",
    "run_export",
    "run_exports",
    "running_process",
    "start_server",
    "wait_ready",
    "write_photos",
]
