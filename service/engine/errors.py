"""How a request through the engine can fail: a neutral `Kind`, a detail fit for the client, a reason.

The engine knows no protocol: each door maps a kind onto its own status (HTTP codes in
`service/http_status.py`), so every door answers the same failure the same way. `reason` is the
label of the `simpool_failures_total` metric; `retry_after_s` says when a refused client may come back.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    BAD_IMAGE = "bad_image"  # undecodable image or base64
    NOT_FOUND = "not_found"  # unknown model
    TOO_LARGE = "too_large"  # too many images, bytes or pixels
    INVALID = "invalid"  # a malformed body or field, an output the model lacks
    DISCONNECTED = "disconnected"  # the client left before its answer
    INTERNAL = "internal"  # inference failed (the log has the traceback)
    OVERLOADED = "overloaded"  # the model's queue is full: come back after `retry_after_s`
    NOT_READY = "not_ready"  # loading, stopped or failing: come back after `retry_after_s`
    TIMEOUT = "timeout"  # the request's deadline passed
    LOAD_FAILED = "load_failed"  # a model (re)load asked for failed: the serving version is kept


class EngineError(Exception):
    """Ends a request: its `kind`, `detail` for the client, `reason` for metrics."""

    def __init__(self, kind: Kind, detail: str, reason: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.reason = reason
        self.retry_after_s = retry_after_s


def overloaded(detail: str, reason: str = "queue_full", retry_after_s: int = 1) -> EngineError:
    """A full queue: the client may come back after `retry_after_s`."""
    return EngineError(Kind.OVERLOADED, detail, reason, retry_after_s=retry_after_s)


def not_ready(detail: str, reason: str = "not_ready", retry_after_s: int = 1) -> EngineError:
    """A model (or the engine) that cannot answer yet: the client may come back after `retry_after_s`."""
    return EngineError(Kind.NOT_READY, detail, reason, retry_after_s=retry_after_s)


class Incomplete(Exception):
    """A model folder still being written: a graph or whitening whose bytes are not yet the ones its
    manifest (or settings file) names. Not a failure: under `poll` its previous version keeps serving
    until the folder is complete."""


# A batch that failed inside onnxruntime: the client learns only that, the log gets the traceback.
INFERENCE_FAILED = "inference failed; the error is in the server log"
