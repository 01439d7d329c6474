"""Refusals only a door makes (the engine never does): no valid API key, a body it cannot read.

Like the engine's `EngineError`, a `Refusal` names no protocol; each door maps its kind onto its own
status (HTTP in `service/http_status.py`).
"""

from __future__ import annotations

from enum import StrEnum


class RefusalKind(StrEnum):
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong API key
    UNSUPPORTED_MEDIA = "unsupported_media"  # a content type or encoding no door reads
    FORBIDDEN = "forbidden"  # an operation this server's mode does not allow (repository load/unload)


class Refusal(Exception):
    """Ends a request before the engine sees it: `kind`, `detail` for the client, `reason` for metrics."""

    retry_after_s: int | None = None

    def __init__(self, kind: RefusalKind, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.reason = reason


def unauthenticated(detail: str) -> Refusal:
    return Refusal(RefusalKind.UNAUTHENTICATED, detail, "unauthorized")


def unsupported_media(detail: str) -> Refusal:
    return Refusal(RefusalKind.UNSUPPORTED_MEDIA, detail, "unsupported_media_type")


def forbidden(detail: str) -> Refusal:
    return Refusal(RefusalKind.FORBIDDEN, detail, "forbidden")
