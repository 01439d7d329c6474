"""Batch → answers: a per-model dynamic batcher on the event loop, feeding the model's inference threads.

Images of all requests join one bounded queue. A batch runs as soon as an inference lane is free and
either the batch is full, the oldest image has waited `max_delay_s`, or the image arrived at an idle
model (a lone request never waits for the window). Answers go back to their request by position, so
the images of one request may span batches. One failing batch fails only its requests. A batch holds
images of one shape and one in-graph scale only (the head of the queue decides): a `full` view keeps
each photograph's aspect ratio, and padding would change its attention and its γ-pooling.

Lanes: when nothing runs and the queue holds at most one batch, that batch runs on every intra-op
thread (`run`: the lowest latency). With more work waiting, up to `lanes` batches run at once, each
on its share of the threads (`lane_run`): on a CPU that also decodes and serves HTTP, independent
single-thread runs lose less to preemption than one run whose threads wait for each other.

Alone: one image arriving at an idle model (`idle_for`) may skip the queue (`run_alone`): its decode
and its batch-1 run are one job on one inference thread, so it costs one hand-off to a thread and one
back, not four, and no wake-up of the batcher's loop; the model counts as busy meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simpool_serve.service.engine.errors import INFERENCE_FAILED, EngineError, Kind, not_ready, overloaded
from simpool_serve.service.metrics import Metrics

log = logging.getLogger("simpool_serve.batcher")

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchRun:
    """One batch a traced request's images ran in: when (epoch ns), how many images, and the trace
    contexts of every traced request in it (for the spans' links)."""

    start_ns: int
    end_ns: int
    size: int
    traces: tuple[object, ...]


@dataclass(eq=False)
class Job:
    """One request's images in flight: answers are filled in by position as batches finish.

    `trace` is the request's span context when it is traced; its batches are then kept in `batches`.
    """

    results: list[Outputs | None]
    future: asyncio.Future[list[Outputs | None]]
    enqueued_at: float
    trace: object | None = None
    batches: list[BatchRun] = field(default_factory=list)
    prepared: Any = None  # `run_alone`: what the preparation returned besides the pixels
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = len(self.results)


@dataclass(slots=True)
class _Item:
    job: Job
    index: int
    pixels: np.ndarray
    scale: float

    @property
    def key(self) -> tuple[tuple[int, ...], float]:
        """What a batch's images must share: their shape and their scale."""
        return self.pixels.shape, self.scale


class Batcher:
    """Owns one model's queue and feeds its inference threads (`executor`, one thread per lane).

    `run` is the graph on all of the model's threads (an `OnnxRunner.run`); `lane_run`, if given, is
    the graph on one lane's share of them, and may be called from `lanes` threads at once.
    """

    def __init__(
        self,
        model: str,
        run: Callable[[np.ndarray], Outputs],
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics,
        lane_run: Callable[[np.ndarray], Outputs] | None = None,
        lanes: int = 1,
    ) -> None:
        self.model = model
        self._run = run
        self._lane_run = lane_run if lanes > 1 else None
        self.lanes = lanes if self._lane_run is not None else 1
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._reserved = 0  # images admitted and still decoding
        self._batches: set[asyncio.Task[None]] = set()  # batches executing now
        self._solo = False  # the one running batch has every thread
        self._alone: asyncio.Future[Any] | None = None  # a lone image's decode and run (`run_alone`)
        self._run_now = False  # the queue's head arrived at an idle model
        self._closing = False
        # Batches that failed in a row (reset by a success) and the last one's error: the engine's
        # readiness turns 503 past a threshold, so a balancer stops sending to a model that keeps failing.
        self.failed_in_a_row = 0
        self.last_failure: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._depth = metrics.queue_depth.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._stage_inference = metrics.stage_duration.labels(model, "inference")
        self._stage_wait = metrics.stage_duration.labels(model, "queue_wait")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.model}")
        self._task.add_done_callback(self._on_exit)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stops taking images, runs everything already queued, then ends the loop."""
        self._closing = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            if self._queue:
                self._fail_queued(not_ready(f"model {self.model!r} stopped", "stopped"))
            return
        # Should never happen (each batch's errors are caught), but if it does, nobody waits forever
        # and /readyz reports the model as not serving.
        log.error("batcher of %s died", self.model, exc_info=task.exception())
        self._fail_queued(EngineError(Kind.INTERNAL, INFERENCE_FAILED, "batcher_died"))

    def _fail_queued(self, error: EngineError) -> None:
        for item in self._queue:
            if not item.job.future.done():
                item.job.future.set_exception(error)
        self._queue.clear()
        self._depth.set(0)

    # -- admission -------------------------------------------------------------------------------

    def reserve(self, n: int) -> None:
        """Admits `n` images before they are decoded, or refuses with 503 when the queue is full."""
        if not self.alive or self._closing:
            raise not_ready(f"model {self.model!r} is not serving")
        if self._reserved + len(self._queue) + n > self.max_queue:
            raise overloaded(f"queue of model {self.model!r} is full, retry later")
        self._reserved += n

    def release(self, n: int) -> None:
        """Gives back reserved places of images that will not be queued (decode failures, errors)."""
        self._reserved = max(0, self._reserved - n)

    def submit(self, pixels: list[np.ndarray | None], trace: object | None = None, scale: float = 1.0) -> Job:
        """Queues a request's decoded images (reserved before); `None` entries are skipped images.

        `scale` is fed to the graph's scale input (1: the graph's default). `trace`, the request's span
        context when it is traced, makes the job keep its batches.
        """
        loop = asyncio.get_running_loop()
        job = Job([None] * len(pixels), loop.create_future(), time.perf_counter(), trace)
        present = [(i, p) for i, p in enumerate(pixels) if p is not None]
        self.release(len(pixels))
        job.remaining = len(present)
        if not present:
            job.future.set_result(job.results)
            return job
        if not self.alive:
            job.future.set_exception(not_ready(f"model {self.model!r} is not serving"))
            return job
        if not self._batches and not self._queue and self._alone is None:
            self._run_now = True
        self._queue.extend(_Item(job, i, p, scale) for i, p in present)
        self._depth.set(len(self._queue))
        self._wake.set()
        return job

    def cancel(self, job: Job) -> int:
        """Drops a request's images not yet in a batch (deadline passed, client gone); returns how many."""
        before = len(self._queue)
        if before:
            self._queue = deque(item for item in self._queue if item.job is not job)
            self._depth.set(len(self._queue))
        return before - len(self._queue)

    # -- the loop --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    break
                await self._sleep()
                continue
            if self._solo or self._alone is not None or len(self._batches) >= self.lanes:  # all taken
                await self._sleep()
                continue
            if len(self._queue) < self.max_batch_size and not self._run_now and not self._closing:
                waited = time.perf_counter() - self._queue[0].job.enqueued_at
                if waited < self.max_delay_s:
                    await self._sleep(self.max_delay_s - waited)
                    continue
            # One batch's worth of work on an idle model: all threads on it. More: fill the lanes.
            solo = self._lane_run is None or (not self._batches and len(self._queue) <= self.max_batch_size)
            items = self._take()
            self._depth.set(len(self._queue))
            self._run_now = False
            self._solo = solo
            batch = loop.create_task(self._execute(loop, items, solo), name=f"batch:{self.model}")
            self._batches.add(batch)
            batch.add_done_callback(functools.partial(self._on_batch_done, items))
        running = [*self._batches, *([self._alone] if self._alone is not None else [])]
        if running:  # closing: the batches already running finish first
            await asyncio.gather(*running, return_exceptions=True)

    def _take(self) -> list[_Item]:
        """The next batch: up to `max_batch_size` images of the head's shape and scale, in queue order."""
        key = self._queue[0].key
        if all(item.key == key for item in self._queue):  # the usual case: one shape (the crop view)
            n = min(self.max_batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]
        items: list[_Item] = []
        rest: deque[_Item] = deque()
        for item in self._queue:
            (items if len(items) < self.max_batch_size and item.key == key else rest).append(item)
        self._queue = rest
        return items

    async def _sleep(self, timeout: float | None = None) -> None:
        """Until something changes (an image queued, a batch done, closing), or `timeout` passes."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _on_batch_done(self, items: list[_Item], batch: asyncio.Task[None]) -> None:
        self._batches.discard(batch)
        self._solo = False
        self._wake.set()
        if batch.cancelled() or batch.exception() is None:
            return
        # `_execute` handles inference errors itself; anything else is a bug, but its requests must
        # still get an answer rather than wait for their deadline.
        log.error("batch on model %s failed", self.model, exc_info=batch.exception())
        error = EngineError(Kind.INTERNAL, INFERENCE_FAILED, "inference_error")
        for item in items:
            if not item.job.future.done():
                item.job.future.set_exception(error)

    async def _execute(self, loop: asyncio.AbstractEventLoop, items: list[_Item], solo: bool) -> None:
        now = time.perf_counter()
        for item in items:
            self._stage_wait.observe(now - item.job.enqueued_at)
        self._batch_size.observe(len(items))
        start_ns = time.time_ns()
        try:
            run = self._run if solo or self._lane_run is None else self._lane_run
            if items[0].scale != 1.0:
                run = functools.partial(run, scale=items[0].scale)
            outputs, seconds = await loop.run_in_executor(
                self._executor, self._infer, run, [i.pixels for i in items]
            )
        except Exception as exc:
            error = self._failed(exc, len(items))
            for item in items:
                if not item.job.future.done():
                    item.job.future.set_exception(error)
                    self.cancel(item.job)  # its other images need not run
            return
        self._succeeded(seconds)
        _record_batch(items, start_ns)
        for pos, item in enumerate(items):
            job = item.job
            if job.future.done():  # timed out or gone meanwhile
                continue
            job.results[item.index] = {name: out[pos] for name, out in outputs.items()}
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)

    def _failed(self, exc: Exception, images: int) -> EngineError:
        """A batch's failure: logged, counted towards readiness, and the error its requests get."""
        log.error("batch of %d images on model %s failed", images, self.model, exc_info=exc)
        self.failed_in_a_row += 1
        self.last_failure = _summary(exc)
        return EngineError(
            Kind.INTERNAL,
            f"inference failed on model {self.model!r} ({self.last_failure}); the full error is in the "
            "server log",
            "inference_error",
        )

    def _succeeded(self, seconds: float) -> None:
        self.failed_in_a_row = 0
        self._inference.observe(seconds)
        self._stage_inference.observe(seconds)

    # -- alone -----------------------------------------------------------------------------------

    def idle_for(self, n: int) -> bool:
        """Whether the `n` images just admitted are all the model has (nothing queued, running, or
        decoding for another request): then `run_alone` may take one of them."""
        return (
            self.alive
            and not self._closing
            and not self._batches
            and not self._queue
            and self._alone is None
            and self._reserved == n
        )

    def run_alone(self, prepare: Callable[[], tuple[np.ndarray, Any]]) -> Job:
        """One admitted image at an idle model (`idle_for(1)`), in one job of an inference thread:
        `prepare()` (its decode: the pixels, and anything else, kept in `Job.prepared`), then the graph
        on every intra-op thread. The job's future is `submit`'s (the graph's failure an `EngineError`
        as for a batch), or holds the exception `prepare` raised."""
        loop = asyncio.get_running_loop()
        job = Job([None], loop.create_future(), time.perf_counter())
        self.release(1)
        self._alone = loop.run_in_executor(self._executor, self._prepare_and_infer, prepare)
        self._alone.add_done_callback(functools.partial(self._on_alone_done, job))
        return job

    def _prepare_and_infer(self, prepare: Callable[[], tuple[np.ndarray, Any]]) -> tuple[Outputs, float, Any]:
        """Runs in an inference thread: the preparation, then the graph on every thread."""
        try:
            pixels, prepared = prepare()
        except Exception as exc:
            raise _Unprepared from exc
        outputs, seconds = self._infer(self._run, [pixels])
        return outputs, seconds, prepared

    def _on_alone_done(self, job: Job, done: asyncio.Future[tuple[Outputs, float, Any]]) -> None:
        self._alone = None
        self._wake.set()  # images queued meanwhile may run now
        exc = done.exception() if not done.cancelled() else not_ready(f"model {self.model!r} stopped")
        if isinstance(exc, _Unprepared):
            error: BaseException = exc.__cause__ or exc
        elif exc is not None:
            error = self._failed(exc, 1) if isinstance(exc, Exception) else exc
        else:
            outputs, seconds, job.prepared = done.result()
            self._stage_wait.observe(0.0)  # it never queued
            self._batch_size.observe(1)
            self._succeeded(seconds)
            if not job.future.done():
                job.results[0] = {name: out[0] for name, out in outputs.items()}
                job.remaining = 0
                job.future.set_result(job.results)
            return
        if not job.future.done():
            job.future.set_exception(error)

    @staticmethod
    def _infer(run: Callable[[np.ndarray], Outputs], pixels: list[np.ndarray]) -> tuple[Outputs, float]:
        """Runs in an inference thread: stack (the one copy; a lone image goes in as it is) and run."""
        batch = pixels[0][np.newaxis] if len(pixels) == 1 else np.stack(pixels)
        start = time.perf_counter()
        outputs = run(batch)
        return outputs, time.perf_counter() - start


class _Unprepared(Exception):
    """`run_alone`'s preparation failed (its cause is the error): not the graph's failure."""


def _record_batch(items: list[_Item], start_ns: int) -> None:
    """Tells each traced request of a batch when it ran, how big it was, and who ran with it."""
    jobs = {id(item.job): item.job for item in items if item.job.trace is not None}
    if not jobs:
        return
    run = BatchRun(start_ns, time.time_ns(), len(items), tuple(job.trace for job in jobs.values()))
    for job in jobs.values():
        job.batches.append(run)


def _summary(exc: BaseException, limit: int = 200) -> str:
    """An error in one line (its type and first line, at most `limit` characters), fit for a client."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
