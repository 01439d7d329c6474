"""The engine: encoded images (or ready pixels) in, per-image model outputs out; no HTTP in here.

Every door (the REST API, the Open Inference Protocol, the OpenAI route, `simpool-embed --local`)
calls one `Engine`, so their images share one repository, one decode pool, one batcher per model
and one set of limits. A request goes: `model(name)` (NOT_FOUND, or NOT_READY while loading) →
`run(model, Call(...))`: admission (queue places, OVERLOADED when full) → decode (the pool, a few
images of a request at a time) → the model's batcher → wait (its deadline: TIMEOUT; the client
leaving: DISCONNECTED) → an `Answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from simpool_serve.service.engine import split_resize
from simpool_serve.service.engine.batcher import Job, Outputs
from simpool_serve.service.engine.boxes import attention_box
from simpool_serve.service.engine.config import EngineConfig
from simpool_serve.service.engine.decode import Decoder, Payload
from simpool_serve.service.engine.descriptor import CROP, Box, Descriptor, Resolved, resolve
from simpool_serve.service.engine.errors import EngineError, Kind
from simpool_serve.service.engine.models import (
    LoadedModel,
    ModelFolder,
    default_model,
    discover,
    folder_names,
    load_model,
)
from simpool_serve.service.engine.overlay import attention_png
from simpool_serve.service.engine.plan import ThreadPlan
from simpool_serve.service.engine.preprocess import Geometry, ImageError, own_pixel_limit
from simpool_serve.service.engine.repository import Repository, RepositoryEntry, describe
from simpool_serve.service.engine.runner import OnnxRunner, RunnerFactory
from simpool_serve.service.engine.whitening import Whitening
from simpool_serve.service.metrics import Metrics
from simpool_serve.spec import ATTENTION, EMBEDDING, LOGITS, ManifestError

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from simpool_serve.service.engine.spans import RequestSpans

log = logging.getLogger("simpool_serve.engine")

OnError = Literal["fail", "skip"]
# Called only if the answer is not there at once; returns when the client has gone away.
Disconnected = Callable[[], Awaitable[object]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """What a door asks of the engine: encoded `images` (decoded here) or ready `pixels` (uint8
    [N, S, S, 3], fed to the graph as they are), exactly one of the two; the outputs each image's
    answer must hold; and whether a bad image fails the request (`fail`) or is skipped (`skip`)."""

    images: Sequence[Payload] | None = None
    pixels: np.ndarray | None = None
    outputs: Collection[str] = ()
    on_error: OnError = "fail"
    descriptor: Descriptor = CROP  # the view, scales, region and whitening of the answer's vectors

    @property
    def count(self) -> int:
        """How many images the call holds."""
        if self.images is not None:
            return len(self.images)
        return len(self.pixels) if self.pixels is not None else 0


@dataclass(frozen=True, slots=True)
class ImageFailure:
    """One image that could not be used (with `on_error="skip"`): where, why, and how it counts."""

    index: int
    detail: str
    kind: Kind  # BAD_IMAGE or TOO_LARGE
    reason: str  # the failure metric's label


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's outputs, per image in request order (`None` for an image in `failures`)."""

    model: LoadedModel
    outputs: list[Outputs | None]
    failures: list[ImageFailure]
    geometries: list[Geometry | None] | None  # per image: its view on the original (for boxes)
    fingerprint: str  # of the descriptor: the graph's own for the default crop view
    normalized: bool = False  # the embeddings are already L2-normalised (several scales, whitening)


class Engine:
    """Owns the models, the thread pools and the batchers; the app's lifespan (or a CLI) owns it."""

    def __init__(
        self,
        config: EngineConfig,
        metrics: Metrics,
        folders: Mapping[str, ModelFolder],
        default: str | None,
        runner_factory: RunnerFactory = OnnxRunner,
        tracer: Tracer | None = None,
    ) -> None:
        """`folders`: the models `load` loads (under `poll`, also whatever the first rescan finds);
        `default`: the model of requests that name none (None: they must name one)."""
        self.config = config
        self._tracer = tracer  # None: tracing is off, and no span site runs
        self.limits = config.limits
        self._runner_factory = runner_factory
        self.metrics = metrics
        self._initial: Mapping[str, ModelFolder] = MappingProxyType(dict(folders))
        self.default = default
        self.plan = ThreadPlan.resolve(config)
        plan = self.plan
        # Shared: the one pool runs decoding and inference (see Settings.shared_compute_pool).
        self._pool = ThreadPoolExecutor(
            plan.decode_workers, thread_name_prefix="compute" if plan.shared_pool else "decode"
        )
        # Graphs are read, verified and warmed here, so a reload under traffic takes no thread that
        # decodes or runs requests.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="load")
        self._decoder = Decoder(self.limits, config.jpeg_draft, metrics)
        # A lone image shares its resize with an idle thread of the pool, where that gives Pillow's pixels.
        self._resize_helper = self._pool if split_resize.agrees(self._pool) else None
        if self._resize_helper is None:
            log.warning("this Pillow orders its resize passes otherwise: a lone image resizes on one thread")
        # One request decodes at most this many of its images at once, so the pool's queue interleaves
        # requests: a 64-image request of 50-megapixel PNGs made a lone image wait 15.7 s when all 64 were
        # queued ahead of it; now it waits for at most one decode.
        self._decodes_per_request = plan.decode_workers
        # PNG overlays in progress at once: each holds its decoded original (3 bytes a pixel, 150 MB at
        # 50 MP) from decoding until its PNG is written; beyond this, requests wait (up to their deadline).
        self._overlay_slots = asyncio.Semaphore(2 * plan.decode_workers)
        self._repository = Repository(config.model_dir, self._open_model, self._close_model, metrics)
        self._poller: asyncio.Task[None] | None = None
        starting = folder_names(config.model_dir) if config.model_control == "poll" else self._initial
        for name in starting:  # until `load` gets to them, their requests are told to come back
            self._repository.set_note(name, "LOADING", "waiting to load")
        self._loaded = False
        self.load_error: str | None = None
        own_pixel_limit()
        log.info(
            "thread budget",
            extra={
                "cores": plan.cores,
                "decode_workers": plan.decode_workers,
                "intra_op_threads_per_model": plan.intra_op_threads,
                "inference_lanes_per_model": plan.lanes,
                "shared_pool": plan.shared_pool,
            },
        )

    @classmethod
    def from_config(
        cls,
        config: EngineConfig,
        metrics: Metrics,
        runner_factory: RunnerFactory = OnnxRunner,
        tracer: Tracer | None = None,
    ) -> Engine:
        """The engine of `config.model_dir` under its model control mode; raises `ManifestError` for a
        repository it cannot start with (`none`: a broken or empty one; `explicit`: a named model that is
        missing or broken)."""
        if config.model_control == "none":
            folders = discover(config.model_dir)
            return cls(
                config, metrics, folders, default_model(folders, config.default_model), runner_factory, tracer
            )
        if not config.model_dir.is_dir():
            raise ManifestError(f"model directory {config.model_dir} does not exist")
        if config.model_control == "poll":
            names = folder_names(config.model_dir)
            folders = {}  # the first rescan reads them, and a broken one does not stop the start
        else:
            names = list(dict.fromkeys(config.load_models))
            folders = {name: ModelFolder.read(config.model_dir / name) for name in names}
        default = config.default_model or (sorted(names)[0] if names else None)
        return cls(config, metrics, folders, default, runner_factory, tracer)

    # -- models and readiness --------------------------------------------------------------------

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """The models serving now, by name."""
        return MappingProxyType(self._repository.models)

    async def load(self) -> None:
        """Loads, verifies and warms the starting models in turn (the peak memory of one load), then is
        ready; under `poll`, rescans the model directory from then on.

        Under `none` and `explicit` a failure is kept for `not_ready_reason` and raised; the models
        loaded before it keep serving. Under `poll` a folder that fails is noted in the index and
        tried again when its files change.
        """
        repo = self._repository
        try:
            if self.config.model_control == "poll":
                await repo.rescan()
            else:
                for name, folder in self._initial.items():
                    await repo.load(name, folder)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            for name in self._initial:
                if repo.version(name) is None and (note := repo.note(name)) and note.state == "LOADING":
                    repo.set_note(name, "UNAVAILABLE", f"not loaded: {self.load_error}")
            raise
        self._loaded = True
        self.metrics.ready.set(1)
        if self.config.model_control == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="poll-models")
            self._poller.add_done_callback(_poller_ended)
        log.info(
            "ready: every model is loaded and warmed up; serving requests",
            extra={"models": sorted(repo.models), "default_model": self.default,
                   "model_control": self.config.model_control},
        )  # fmt: skip

    async def _poll(self) -> None:
        """Rescans the model directory every `poll_s` until closed; a failed pass is logged, never fatal."""
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                await self._repository.rescan()
            except Exception:
                log.exception(
                    "rescanning the model directory failed; trying again in %s s", self.config.poll_s
                )

    async def load_model(self, name: str) -> LoadedModel:
        """Loads or reloads `name` from its folder in the model directory, once verified and warm
        (LOAD_FAILED saying why not; the serving version, if any, stays)."""
        path = self.config.model_dir / name
        if name != path.name or not path.is_dir():
            shown = name if len(name) <= 100 else f"{name[:100]}..."
            raise EngineError(
                Kind.LOAD_FAILED,
                f"no model folder {shown!r} in the model directory; its folders: "
                f"{folder_names(self.config.model_dir)}",
                "unknown_model",
            )
        try:
            await self._repository.load(name)
        except Exception as exc:  # logged, counted and noted for the index by the repository
            raise EngineError(
                Kind.LOAD_FAILED, f"failed to load model {name!r}: {describe(exc)}", "load_failed"
            ) from exc
        version = self._repository.version(name)
        assert version is not None
        return version.model

    async def unload_model(self, name: str) -> bool:
        """Stops serving `name` once the requests holding it are answered; False when it was not served."""
        return await self._repository.unload(name)

    async def _open_model(self, folder: ModelFolder) -> LoadedModel:
        if self.plan.shared_pool:
            executor = self._pool
        else:
            executor = ThreadPoolExecutor(self.plan.lanes, thread_name_prefix=f"infer-{folder.name}")
        try:
            return await load_model(
                folder, self.config, self.plan, self.metrics, executor, self._runner_factory, self._loader
            )
        except BaseException:
            if executor is not self._pool:
                executor.shutdown(wait=False)
            raise

    async def _close_model(self, model: LoadedModel) -> None:
        """Answers what the model's batcher holds, then stops its threads; the caller drops it."""
        await model.batcher.close()
        if model.executor is not self._pool:
            model.executor.shutdown(wait=False)  # its batches are done
        serving = self._repository.version(model.name)
        same = serving is not None and (serving.model.provider, serving.model.fingerprint) == (
            model.provider,
            model.fingerprint,
        )
        if not same:  # a reload of the same bytes keeps the series its new version set
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(model.name, model.provider, model.fingerprint)

    def not_ready_reason(self) -> str | None:
        """Why the engine cannot answer every model it serves now, or None when it can."""
        if self.load_error is not None:
            return f"model loading failed: {self.load_error}"
        if not self._loaded:
            return "models are loading"
        served = self._repository.models.values()
        dead = [m.name for m in served if not m.batcher.alive]
        if dead:
            return f"models not serving: {dead}"
        limit = self.config.unready_after_failed_batches
        failing = [m.batcher for m in served if limit and m.batcher.failed_in_a_row >= limit]
        if failing:
            return "; ".join(
                f"model {b.model!r} is failing: its last {b.failed_in_a_row} batches failed "
                f"({b.last_failure})"
                for b in failing
            )
        return None

    def model(self, name: str | None) -> LoadedModel:
        """The model named (None: the default) as it serves now; NOT_FOUND when none serves under that
        name, NOT_READY while it loads. A request that runs the model holds it with `lease`."""
        wanted = self._wanted(name)
        version = self._repository.version(wanted)
        if version is None:
            raise self._repository.missing(wanted, by_default=name is None)
        return version.model

    @contextlib.contextmanager
    def lease(self, name: str | None) -> Iterator[LoadedModel]:
        """`model(name)`, kept serving until the block ends: a reload or unload meanwhile closes this
        version only after, so the request finishes on the version it started on."""
        wanted = self._wanted(name)
        version = self._repository.version(wanted)
        if version is None:
            raise self._repository.missing(wanted, by_default=name is None)
        with version.hold() as model:
            yield model

    def _wanted(self, name: str | None) -> str:
        if name is not None:
            return name
        if self.default is None:
            raise EngineError(
                Kind.NOT_FOUND,
                "no default model is loaded: name the model (SIMPOOL_DEFAULT_MODEL sets a default)",
                "unknown_model",
            )
        return self.default

    def repository(self) -> list[RepositoryEntry]:
        """Every model the repository holds and its state, sorted by name; every door's repository index."""
        return self._repository.entries()

    def deadline(self) -> float:
        """The deadline (event-loop time) of a request starting now: `request_timeout_s` from now."""
        return asyncio.get_running_loop().time() + self.config.request_timeout_s

    # -- requests --------------------------------------------------------------------------------

    async def run(
        self,
        model: LoadedModel,
        call: Call,
        *,
        deadline: float,
        disconnected: Disconnected | None = None,
    ) -> Answer:
        """Runs `call`'s images through `model`, by `deadline` (event-loop time).

        Every image's outputs hold at least those named in `call.outputs` (a model without one of them
        is refused, INVALID). With `on_error="fail"` the first bad image fails the request (BAD_IMAGE or
        TOO_LARGE naming its index); with `"skip"` it is answered `None` and listed in
        `Answer.failures`.
        """
        return await self._run(model, call, deadline, disconnected, counted=True)

    async def _run(
        self,
        model: LoadedModel,
        call: Call,
        deadline: float,
        disconnected: Disconnected | None,
        *,
        counted: bool,
    ) -> Answer:
        """`run`; `counted=False` for a pass the engine makes on its own (the attention region's first),
        whose images and failures the request's own pass counts."""
        images, pixels, on_error = call.images, call.pixels, call.on_error
        if (images is None) == (pixels is None):
            raise EngineError(Kind.INVALID, "send either encoded images or pixels, not both", "malformed")
        resolved = self.resolve(model, call.descriptor)
        self._check_outputs(model, call.outputs, resolved)
        spans = self._spans(model, call.count)
        places = call.count * len(resolved.scales)  # each image runs once per scale
        if pixels is not None:
            if resolved.view != "crop":
                raise EngineError(Kind.INVALID, "pixels are the crop view's input; send images", "malformed")
            rows: list[np.ndarray | None] = self._pixel_rows(model, pixels)
            self._admit(model, len(rows), places)
            failures: list[ImageFailure] = []
            geometries: list[Geometry | None] | None = None
        else:
            assert images is not None
            regions = None
            if resolved.by_attention:  # a first pass finds each image's own box
                regions = await self._attention_regions(model, images, resolved, deadline, disconnected)
            self._admit(model, len(images), places)
            if places == 1 and resolved.is_crop and spans is None and model.batcher.idle_for(1):
                alone = self._run_alone(model, images[0], on_error, resolved, deadline, disconnected, counted)
                return await alone
            with spans.decode() if spans is not None else contextlib.nullcontext():
                rows, failures, geometries = await self._decode(
                    model, places, self._decode_all(model, images, resolved, regions), deadline
                )
            if failures and on_error == "fail":
                model.batcher.release(places)
                first = failures[0]
                raise EngineError(first.kind, f"image {first.index}: {first.detail}", first.reason)
            for failure in failures if counted else ():
                self.metrics.failures.labels(model.name, failure.reason).inc()
        per_scale = await self._submit(model, rows, resolved.scales, deadline, disconnected, spans)
        if counted:
            self.metrics.images.labels(model.name).inc(len(rows) - len(failures))
        if resolved.scales == (1.0,) and not resolved.whiten:
            return Answer(model, per_scale[0], failures, geometries, resolved.fingerprint)
        outputs = combine(per_scale, resolved, model.whitening)
        return Answer(model, outputs, failures, geometries, resolved.fingerprint, normalized=True)

    async def _run_alone(
        self,
        model: LoadedModel,
        payload: Payload,
        on_error: OnError,
        resolved: Resolved,
        deadline: float,
        disconnected: Disconnected | None,
        counted: bool,
    ) -> Answer:
        """A lone image at an idle model: its decode and its graph run are one job of an inference
        thread (batcher.py, Alone), the same answer as through the queue with two thread hand-offs fewer.
        """
        job = model.batcher.run_alone(
            functools.partial(self._decoder.pixels, payload, model.manifest, model.name, self._resize_helper)
        )
        try:
            outputs = await self._wait(job, model, deadline, disconnected)
        except EngineError:
            raise
        except Exception as exc:  # the decode's
            failure = _image_failure(0, exc)
            if on_error == "fail":
                raise EngineError(failure.kind, f"image 0: {failure.detail}", failure.reason) from None
            if counted:
                self.metrics.failures.labels(model.name, failure.reason).inc()
                self.metrics.images.labels(model.name).inc(0)  # the series exists, as the queue's path
            return Answer(model, [None], [failure], [None], resolved.fingerprint)
        if counted:
            self.metrics.images.labels(model.name).inc()
        return Answer(model, outputs, [], [job.prepared], resolved.fingerprint)

    async def _attention_regions(
        self,
        model: LoadedModel,
        images: Sequence[Payload],
        resolved: Resolved,
        deadline: float,
        disconnected: Disconnected | None,
    ) -> list[Box | None]:
        """`region="attention"`: each image's box of its own SimPool attention, in the full view at
        scale 1 and the same size (the box rule of `/attention`, default mass), in original pixels. An
        image that fails here gets no box, and fails again, with its index, in the pass that follows."""
        first = Call(images=images, outputs=(ATTENTION,), on_error="skip",
                     descriptor=Descriptor(view="full", size=resolved.size))  # fmt: skip
        answer = await self._run(model, first, deadline, disconnected, counted=False)
        geometries = answer.geometries or [None] * len(images)
        return [
            None if out is None or geo is None else _as_box(attention_box(out[ATTENTION], geo))
            for out, geo in zip(answer.outputs, geometries, strict=True)
        ]

    def resolve(self, model: LoadedModel, descriptor: Descriptor) -> Resolved:
        """The descriptor's settings for this model and their fingerprint, or INVALID saying why not."""
        return resolve(
            descriptor,
            model=model.name,
            manifest=model.manifest,
            graph_fingerprint=model.fingerprint,
            max_view_size=self.config.max_view_size,
            whitening=model.whitening,
        )

    async def _submit(
        self,
        model: LoadedModel,
        rows: list[np.ndarray | None],
        scales: tuple[float, ...],
        deadline: float,
        disconnected: Disconnected | None,
        spans: RequestSpans | None,
    ) -> list[list[Outputs | None]]:
        """The request's images at every scale, queued at once (free lanes run scales side by side),
        each scale's answers in order; traced when `spans` is given. If one scale fails, the others
        leave the queue."""
        queued_ns = time.time_ns()
        trace = spans.context() if spans is not None else None
        jobs = [model.batcher.submit(rows, trace=trace, scale=scale) for scale in scales]
        results: list[list[Outputs | None]] = []
        try:
            for job in jobs:
                results.append(await self._wait(job, model, deadline, disconnected))
        except BaseException:
            for job in jobs[len(results) + 1 :]:
                model.batcher.cancel(job)
                job.future.cancel()
            raise
        if spans is not None:
            for job in jobs:
                spans.batches(job, queued_ns)
        return results

    def _spans(self, model: LoadedModel, images: int) -> RequestSpans | None:
        if self._tracer is None:
            return None
        from simpool_serve.service.engine.spans import RequestSpans

        return RequestSpans(self._tracer, model.name, model.fingerprint, images)

    async def attention_png(
        self,
        model: LoadedModel,
        image: Payload,
        *,
        deadline: float,
        disconnected: Disconnected | None = None,
    ) -> bytes:
        """One image's attention as a heat map over the original photograph, as PNG bytes.

        The original stays decoded (at full size) until the PNG is written, so few run at once: past
        the overlay slots a request waits for one, up to its deadline.
        """
        try:
            async with asyncio.timeout_at(deadline):
                await self._overlay_slots.acquire()
        except TimeoutError:
            raise EngineError(
                Kind.TIMEOUT, "request deadline passed waiting for a PNG overlay slot", "timeout"
            ) from None
        try:
            loop = asyncio.get_running_loop()
            self._admit(model, 1, 1)
            work = loop.run_in_executor(
                self._pool, self._decoder.with_original, image, model.manifest, model.name
            )
            try:
                pixels, original, geometry = await self._decode(model, 1, work, deadline)
            except ImageError as exc:
                raise EngineError(exc.kind, f"image 0: {exc}", exc.reason) from exc
            results = await self._wait(model.batcher.submit([pixels]), model, deadline, disconnected)
            self.metrics.images.labels(model.name).inc()
            outputs = results[0]
            assert outputs is not None
            start = time.perf_counter()
            attention = outputs[ATTENTION]
            body = await loop.run_in_executor(self._pool, attention_png, original, geometry, attention)
            self.metrics.stage_duration.labels(model.name, "encode").observe(time.perf_counter() - start)
            return body
        finally:
            self._overlay_slots.release()

    # -- the stages ------------------------------------------------------------------------------

    def _check_outputs(self, model: LoadedModel, outputs: Collection[str], resolved: Resolved) -> None:
        if set(outputs) - {EMBEDDING} and (resolved.scales != (1.0,) or resolved.whiten):
            raise EngineError(
                Kind.INVALID, "several scales or whitening answer only embeddings", "malformed"
            )  # fmt: skip
        if LOGITS in outputs and resolved.view != "crop":
            raise EngineError(Kind.INVALID, "classes come from the crop view only (view=crop)", "malformed")
        if LOGITS in outputs and not model.has_logits:
            raise EngineError(
                Kind.INVALID,
                f"model {model.name!r} has no classifier (no logits); it answers embeddings and attention",
                "no_classifier",
            )
        unknown = sorted(set(outputs) - set(model.runner.output_names))
        if unknown:
            raise EngineError(Kind.INVALID, f"model {model.name!r} has no output {unknown}", "malformed")

    def _pixel_rows(self, model: LoadedModel, pixels: np.ndarray) -> list[np.ndarray | None]:
        s = model.manifest.input_size
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape[1:] != (s, s, 3):
            shape = list(getattr(pixels, "shape", ()))
            raise EngineError(
                Kind.INVALID,
                f"pixels of shape {shape} ({getattr(pixels, 'dtype', type(pixels).__name__)}): "
                f"model {model.name!r} takes uint8 [N, {s}, {s}, 3]",
                "malformed",
            )
        if len(pixels) == 0:
            raise EngineError(Kind.INVALID, "no images", "malformed")
        return list(pixels)

    def _admit(self, model: LoadedModel, n: int, places: int) -> None:
        """Refuses a request larger than a request or the queue may be (TOO_LARGE), then takes its
        `places` (an image per scale; OVERLOADED when the queue is full)."""
        self.limits.check_images(n)
        batcher = model.batcher
        if places > batcher.max_queue:
            raise EngineError(
                Kind.TOO_LARGE, f"{places} images exceed the queue of {batcher.max_queue}", "too_many_images"
            )
        batcher.reserve(places)  # OVERLOADED when full

    async def _decode(self, model: LoadedModel, n: int, work: Awaitable[T], deadline: float) -> T:
        """The decode stage of `n` admitted images, by the deadline; their places go back if it fails.

        Past the deadline, images not yet decoding are cancelled (a running decode finishes alone).
        """
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(work, timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            model.batcher.release(n)
            raise EngineError(Kind.TIMEOUT, "request deadline passed while decoding", "timeout") from None
        except BaseException:
            model.batcher.release(n)
            raise

    async def _decode_all(
        self,
        model: LoadedModel,
        images: Sequence[Payload],
        resolved: Resolved,
        regions: list[Box | None] | None = None,
    ) -> tuple[list[np.ndarray | None], list[ImageFailure], list[Geometry | None]]:
        """Every image's pixels (`regions`: a box per image, found by attention), failures by index."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self._decodes_per_request)
        decoder, manifest, name = self._decoder, model.manifest, model.name
        boxes = regions or [None] * len(images)
        decode_one = (
            decoder.pixels if resolved.is_crop else functools.partial(decoder.view, resolved=resolved)
        )

        async def decode(payload: Payload, box: Box | None) -> tuple[np.ndarray, Geometry]:
            work = (
                decode_one if box is None else functools.partial(decoder.view, resolved=resolved, region=box)
            )
            async with slots:
                return await loop.run_in_executor(self._pool, work, payload, manifest, name)

        results = await asyncio.gather(
            *(decode(p, b) for p, b in zip(images, boxes, strict=True)), return_exceptions=True
        )
        rows: list[np.ndarray | None] = []
        geometries: list[Geometry | None] = []
        failures: list[ImageFailure] = []
        for i, out in enumerate(results):
            if isinstance(out, BaseException):
                failures.append(_image_failure(i, out))
                rows.append(None)
                geometries.append(None)
            else:
                rows.append(out[0])
                geometries.append(out[1])
        return rows, failures, geometries

    async def _wait(
        self, job: Job, model: LoadedModel, deadline: float, disconnected: Disconnected | None
    ) -> list[Outputs | None]:
        """Waits for the answers, the deadline or the client leaving, whichever comes first."""
        loop = asyncio.get_running_loop()
        if not job.future.done():
            gone = asyncio.ensure_future(disconnected()) if disconnected is not None else None
            try:
                await asyncio.wait(
                    (job.future, gone) if gone is not None else (job.future,),
                    timeout=max(0.0, deadline - loop.time()),
                    return_when="FIRST_COMPLETED",
                )
            finally:
                if gone is not None:
                    gone.cancel()
            if not job.future.done():
                model.batcher.cancel(job)
                job.future.cancel()
                if gone is not None and gone.done() and not gone.cancelled():
                    raise EngineError(Kind.DISCONNECTED, "client closed the connection", "disconnected")
                raise EngineError(
                    Kind.TIMEOUT, f"request deadline of {self.config.request_timeout_s} s passed", "timeout"
                )
        return job.future.result()

    async def close(self) -> None:
        """Stops rescanning, drains every batcher (answers what was accepted), then stops the threads."""
        self.metrics.ready.set(0)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._repository.close()
        self._pool.shutdown(wait=True)
        self._loader.shutdown(wait=True)


def _poller_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:  # _poll catches every pass's error
        log.error("the model directory poller stopped", exc_info=task.exception())


def combine(
    per_scale: list[list[Outputs | None]], resolved: Resolved, whitening: Whitening | None
) -> list[Outputs | None]:
    """Each image's descriptor as the paper's `multi_scale` gives it: the graph's embeddings at every
    scale, summed, divided by their count and L2-normalised; then whitened when asked. Other outputs
    (attention) come from scale 1."""
    first = resolved.scales.index(1.0) if 1.0 in resolved.scales else None
    out: list[Outputs | None] = []
    for i, base in enumerate(per_scale[0]):
        if base is None:
            out.append(None)
            continue
        total = sum(np.asarray(s[i][EMBEDDING], np.float64) for s in per_scale if s[i] is not None)
        vector = total / len(per_scale)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        if resolved.whiten:
            assert whitening is not None  # resolve() refused a model without one
            vector = whitening.apply(vector, resolved.dimensions)
        row: Outputs = {} if first is None else dict(per_scale[first][i])  # type: ignore[arg-type]
        row[EMBEDDING] = np.asarray(vector, np.float32)
        out.append(row)
    return out


def _image_failure(index: int, exc: BaseException) -> ImageFailure:
    """An image that could not be decoded; an unexpected error is logged and reported in general terms."""
    if not isinstance(exc, ImageError):
        log.error("decoding image %d failed unexpectedly", index, exc_info=exc)
        exc = ImageError("cannot decode image")
    return ImageFailure(index, str(exc), exc.kind, exc.reason)


def _as_box(box: list[int]) -> Box:
    return float(box[0]), float(box[1]), float(box[2]), float(box[3])
