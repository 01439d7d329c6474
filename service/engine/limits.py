"""The request limits, each checked by one function with one message, whichever door asks.

A door checks a count as early as it can (a multipart body stops at the first image too many), and
the engine checks it again on admission for callers that bring their own images; both call the same
function, so every door refuses with the same words. Each message names the setting to raise.
"""

from __future__ import annotations

from dataclasses import dataclass

from simpool_serve.service.engine.errors import EngineError, Kind


def megabytes(size: int) -> str:
    """`60776064` → `60.8 MB` (decimal megabytes, as people read sizes)."""
    return f"{size / 1e6:.1f} MB"


@dataclass(frozen=True, slots=True)
class Limits:
    max_images: int
    max_request_bytes: int
    max_image_bytes: int
    max_image_pixels: int

    def check_images(self, count: int) -> None:
        """413 for more images in one request than `SIMPOOL_MAX_IMAGES_PER_REQUEST`."""
        if count > self.max_images:
            raise EngineError(
                Kind.TOO_LARGE,
                f"{count} images in one request, over the limit of {self.max_images} "
                "(SIMPOOL_MAX_IMAGES_PER_REQUEST); split them into several requests",
                "too_many_images",
            )

    def check_body(self, size: int, *, declared: bool = False) -> None:
        """413 for a request body over `SIMPOOL_MAX_REQUEST_BYTES` (as declared, or as received)."""
        if size > self.max_request_bytes:
            what = f"request body of {megabytes(size)} ({size} bytes)" if declared else "request body"
            raise EngineError(
                Kind.TOO_LARGE,
                f"{what} is over the limit of {megabytes(self.max_request_bytes)} "
                f"(SIMPOOL_MAX_REQUEST_BYTES={self.max_request_bytes})",
                "too_large",
            )


def image_bytes_message(size: int, limit: int, *, about: bool = False) -> str:
    """The detail of one encoded image over `SIMPOOL_MAX_IMAGE_BYTES`."""
    return (
        f"image of {'about ' if about else ''}{megabytes(size)} ({size} bytes) is over the limit of "
        f"{megabytes(limit)} (SIMPOOL_MAX_IMAGE_BYTES={limit})"
    )
