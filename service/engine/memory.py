"""Giving a closed model's memory back to the system.

A closed session's buffers go back to glibc's heap, which keeps freed pages for reuse: an unloaded
resnet50 left its RSS where it was until `malloc_trim` returned them. Elsewhere (musl, macOS) there is
nothing to call, and the collector's pass is all that runs.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging

log = logging.getLogger("simpool_serve.memory")


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:  # the symbols the process has loaded already (libc's among them); no library search
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Collects unreachable objects (a model's reference cycles), then returns free heap pages."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
