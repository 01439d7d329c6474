"""The request path, stage by stage: parse → decode (thread pool) → batch → wait (deadline, disconnect).

`Service` holds what the app's lifespan owns (models, decode pool, metrics) and runs one request's
images through the stages; the HTTP layer only turns its result into an answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request

from simpool_serve.service.batcher import Batcher, Job, Outputs
from simpool_serve.service.errors import ServiceError, unavailable
from simpool_serve.service.manifest import Manifest
from simpool_serve.service.metrics import Metrics
from simpool_serve.service.models import ServedModel, uses_gpu
from simpool_serve.service.parsing import Fields, Limits, Parsed, parse_request
from simpool_serve.service.preprocess import (
    Geometry,
    ImageError,
    ImageTooLarge,
    decode_image,
    geometry,
    load_original,
    own_pixel_limit,
    prepare,
)
from simpool_serve.service.settings import Settings, available_cores

log = logging.getLogger("simpool_serve.pipeline")

_WHITESPACE = str.maketrans("", "", " \t\r\n")


def payload_bytes(payload: bytes | str, max_bytes: int) -> bytes:
    """The encoded image: raw bytes as sent, or base64 text (plain or a data URI) decoded."""
    if isinstance(payload, bytes):
        if len(payload) > max_bytes:
            raise ImageTooLarge(f"image of {len(payload)} bytes is over the limit of {max_bytes}")
        return payload
    text = payload
    if text[:5].lower() == "data:":  # RFC 2397: the scheme and ";base64" are case-insensitive
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ImageError("data URI is not base64 (expected data:image/...;base64,...)")
    elif text.lstrip()[:8].lower().startswith(("http://", "https://", "file://")):  # ':' is never base64
        raise ImageError("URLs are not fetched; send the image bytes (base64, a data URI or a file part)")
    text = text.translate(_WHITESPACE)  # line-wrapped base64 (MIME, `base64` tool) is accepted
    if len(text) // 4 * 3 > max_bytes + 3:  # refused before decoding; exact below
        raise ImageTooLarge(f"image of about {len(text) // 4 * 3} bytes is over the limit of {max_bytes}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"invalid base64 ({exc})") from exc
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image of {len(data)} bytes is over the limit of {max_bytes}")
    return data


@dataclass(slots=True)
class Overlay:
    """What the PNG answer needs besides the attention map: the upright original and the crop on it.

    It holds one of the service's overlay slots; whoever draws the PNG calls `release` when done.
    """

    original: Image.Image
    geometry: Geometry
    release: Callable[[], None] = lambda: None


@dataclass(slots=True)
class Outcome:
    """One request after inference: per-image outputs (`None` where skipped) and the per-image errors."""

    model: ServedModel
    fields: Fields
    results: list[Outputs | None]
    errors: list[tuple[int, str]]
    overlay: Overlay | None = None


class Service:
    """The lifespan-owned state and the request pipeline."""

    def __init__(
        self, settings: Settings, metrics: Metrics, models: dict[str, ServedModel], default: str
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self.default = default
        gpu = uses_gpu(settings)
        lanes = settings.resolved_inference_lanes(gpu=gpu)
        shared = settings.shared_compute_pool(gpu=gpu)
        workers = settings.resolved_decode_workers(gpu=gpu)
        if shared:  # one thread per core-sized job, decode or inference (see Settings.shared_compute_pool)
            workers = max(workers, lanes)
            self.decode_pool = ThreadPoolExecutor(workers, thread_name_prefix="compute")
        else:
            self.decode_pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        # One request decodes at most this many of its images at once, so the pool's queue interleaves
        # requests: a 64-image request of 50-megapixel PNGs made a lone image wait 15.7 s when all 64 were
        # queued ahead of it; now it waits for at most one decode.
        self.decodes_per_request = workers
        # PNG overlays in progress at once: each holds its decoded original (3 bytes a pixel, 150 MB at
        # 50 MP) from decoding until its PNG is written; beyond this, requests wait (up to their deadline).
        self.overlay_slots = asyncio.Semaphore(2 * workers)
        for model in models.values():
            model.executor = (
                self.decode_pool
                if shared
                else ThreadPoolExecutor(lanes, thread_name_prefix=f"infer-{model.name}")
            )
        log.info(
            "thread budget",
            extra={
                "cores": available_cores(),
                "decode_workers": workers,
                "intra_op_threads_per_model": settings.resolved_intra_op_threads(gpu=gpu),
                "inference_lanes_per_model": lanes,
                "shared_pool": shared,
            },
        )
        self.limits = Limits(settings.max_request_bytes, settings.max_images_per_request)
        own_pixel_limit()
        self.loaded = False
        self.load_error: str | None = None

    # -- readiness -------------------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        if self.load_error is not None:
            return f"model loading failed: {self.load_error}"
        if not self.loaded:
            return "models are loading"
        dead = [m.name for m in self.models.values() if m.batcher is None or not m.batcher.alive]
        return f"models not serving: {dead}" if dead else None

    def resolve(self, name: str | None) -> ServedModel:
        model = self.models.get(name or self.default)
        if model is None:
            shown = name if name is None or len(name) <= 100 else f"{name[:100]}..."  # not echoed whole
            raise ServiceError(
                404, f"unknown model {shown!r}; served: {sorted(self.models)}", "unknown_model"
            )
        if model.batcher is None:
            raise unavailable(f"model {model.name!r} is still loading", "not_ready", retry_after_s=5)
        return model

    # -- the stages ------------------------------------------------------------------------------

    def _decode(self, payload: bytes | str, manifest: Manifest, model: str) -> np.ndarray:
        """Decode stage, in the decode pool."""
        start = time.perf_counter()
        data = payload_bytes(payload, self.settings.max_image_bytes)
        pixels = decode_image(data, manifest, self.settings.max_image_pixels, draft=self.settings.jpeg_draft)
        self.metrics.stage_duration.labels(model, "decode").observe(time.perf_counter() - start)
        return pixels

    def _decode_overlay(
        self, payload: bytes | str, manifest: Manifest, model: str
    ) -> tuple[np.ndarray, Overlay]:
        """Decode stage for the PNG answer: it also keeps the upright original (no draft decoding)."""
        start = time.perf_counter()
        data = payload_bytes(payload, self.settings.max_image_bytes)
        original = load_original(data, self.settings.max_image_pixels)
        size = original.size
        pixels = prepare(original, size, (0.0, 0.0, float(size[0]), float(size[1])), manifest)
        self.metrics.stage_duration.labels(model, "decode").observe(time.perf_counter() - start)
        return pixels, Overlay(original, geometry(size[0], size[1], manifest))

    async def process(
        self,
        request: Request,
        fields_type: type[Fields],
        *,
        needs_logits: bool = False,
        overlay: bool = False,
    ) -> Outcome:
        """Runs one request through every stage; raises `ServiceError` for the answer's error status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        parsed: Parsed = await parse_request(request, fields_type, self.limits, deadline)
        model = self.resolve(parsed.fields.model)
        request.state.model = model.name
        request.state.images = len(parsed.images)
        if needs_logits and not model.has_logits:
            raise ServiceError(
                422, f"model {model.name!r} has no classifier; use /embed or /attention", "no_classifier"
            )
        if overlay and len(parsed.images) != 1:
            raise ServiceError(422, "format=png takes exactly one image", "malformed")
        batcher = model.batcher
        assert batcher is not None
        n = len(parsed.images)
        if n > batcher.max_queue:
            raise ServiceError(413, f"{n} images exceed the queue of {batcher.max_queue}", "too_many_images")
        if not overlay:
            return await self._run(request, parsed, model, batcher, deadline, overlay=False)
        try:
            async with asyncio.timeout_at(deadline):
                await self.overlay_slots.acquire()
        except TimeoutError:
            raise ServiceError(
                504, "request deadline passed waiting for a PNG overlay slot", "timeout"
            ) from None
        try:
            outcome = await self._run(request, parsed, model, batcher, deadline, overlay=True)
        except BaseException:
            self.overlay_slots.release()
            raise
        assert outcome.overlay is not None
        outcome.overlay.release = self.overlay_slots.release  # the caller releases it once the PNG is drawn
        return outcome

    async def _run(
        self,
        request: Request,
        parsed: Parsed,
        model: ServedModel,
        batcher: Batcher,
        deadline: float,
        *,
        overlay: bool,
    ) -> Outcome:
        """Decode → batch → wait, for a request already parsed and checked."""
        loop = asyncio.get_running_loop()
        n = len(parsed.images)
        batcher.reserve(n)
        try:
            # Past the deadline, images not yet decoding are cancelled (a running decode finishes alone).
            pixels, errors, extra = await asyncio.wait_for(
                self._decode_all(parsed, model, overlay), timeout=max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            batcher.release(n)
            raise ServiceError(504, "request deadline passed while decoding", "timeout") from None
        except BaseException:
            batcher.release(n)
            raise
        if errors and (parsed.fields.on_error == "fail" or overlay):  # a PNG needs its one image
            batcher.release(n)
            index, exc = errors[0]
            raise ServiceError(exc.status, f"image {index}: {exc}", _reason(exc))
        for _, exc in errors:
            self.metrics.failures.labels(model.name, _reason(exc)).inc()
        job = batcher.submit(pixels)
        results = await self._wait(request, job, model, deadline)
        self.metrics.images.labels(model.name).inc(n - len(errors))
        return Outcome(model, parsed.fields, results, [(i, str(e)) for i, e in errors], extra)

    async def _decode_all(
        self, parsed: Parsed, model: ServedModel, overlay: bool
    ) -> tuple[list[np.ndarray | None], list[tuple[int, ImageError]], Overlay | None]:
        loop = asyncio.get_running_loop()
        if overlay:
            try:
                pix, extra = await loop.run_in_executor(
                    self.decode_pool, self._decode_overlay, parsed.images[0], model.manifest, model.name
                )
                return [pix], [], extra
            except ImageError as exc:
                return [None], [(0, exc)], None
        slots = asyncio.Semaphore(self.decodes_per_request)

        async def decode(payload: bytes | str) -> np.ndarray:
            async with slots:
                return await loop.run_in_executor(
                    self.decode_pool, self._decode, payload, model.manifest, model.name
                )

        outcomes = await asyncio.gather(*(decode(p) for p in parsed.images), return_exceptions=True)
        pixels: list[np.ndarray | None] = []
        errors: list[tuple[int, ImageError]] = []
        for i, out in enumerate(outcomes):
            if isinstance(out, ImageError):
                errors.append((i, out))
                pixels.append(None)
            elif isinstance(out, BaseException):
                log.error("decoding image %d failed unexpectedly", i, exc_info=out)
                errors.append((i, ImageError("cannot decode image")))
                pixels.append(None)
            else:
                pixels.append(out)
        return pixels, errors, None

    async def _wait(
        self, request: Request, job: Job, model: ServedModel, deadline: float
    ) -> list[Outputs | None]:
        """Waits for the answers, the deadline or the client leaving, whichever comes first."""
        loop = asyncio.get_running_loop()
        if not job.future.done():
            gone = loop.create_task(_disconnected(request))
            try:
                await asyncio.wait(
                    (job.future, gone),
                    timeout=max(0.0, deadline - loop.time()),
                    return_when="FIRST_COMPLETED",
                )
            finally:
                gone.cancel()
            if not job.future.done():
                assert model.batcher is not None
                model.batcher.cancel(job)
                job.future.cancel()
                if gone.done() and not gone.cancelled():
                    raise ServiceError(499, "client closed the connection", "disconnected")
                raise ServiceError(
                    504, f"request deadline of {self.settings.request_timeout_s} s passed", "timeout"
                )
        return job.future.result()

    async def close(self) -> None:
        """Drains every batcher (answers what was accepted), then stops the threads."""
        for model in self.models.values():
            if model.batcher is not None:
                await model.batcher.close()
        self.decode_pool.shutdown(wait=True)
        for model in self.models.values():
            if model.executor is not None and model.executor is not self.decode_pool:
                model.executor.shutdown(wait=True)


def _reason(exc: ImageError) -> str:
    return "image_too_large" if isinstance(exc, ImageTooLarge) else "bad_image"


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next message is the disconnect)."""
    while True:
        message: dict[str, Any] = await request.receive()
        if message["type"] == "http.disconnect":
            return
