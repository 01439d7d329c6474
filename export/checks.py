"""onnxruntime, as the export's own steps (parity, quantization, the INT8 gate) load a written graph.

The optional ``scale`` input is an initializer that is also a graph input (so a caller may feed it),
and onnxruntime warns about every such input each time it loads the graph: a warning that every
export would print, about the graph working as designed. These sessions log errors only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnxruntime as ort

ERRORS_ONLY = 3
ORT_DEFAULT_SEVERITY = 2  # warnings: what onnxruntime starts with, and has no getter for


def check_session(path: Path) -> ort.InferenceSession:
    """A CPU session for a check of the written graph."""
    opts = ort.SessionOptions()
    opts.log_severity_level = ERRORS_ONLY
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@contextmanager
def errors_only() -> Iterator[None]:
    """Sessions made inside (the quantizer's own, which take no options of ours) log errors only."""
    ort.set_default_logger_severity(ERRORS_ONLY)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)
