"""The batcher with a plain function as its graph: batching, routing by position, failures, the queue
bound, cancelling, closing and lanes, all observable without a model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from simpool_serve.service.engine.batcher import Batcher
from simpool_serve.service.engine.errors import EngineError, Kind
from simpool_serve.service.metrics import Metrics
from tests.helpers.engine import NOT_READY, OVERLOADED, run

POISON = 255  # an image whose first pixel is this makes the fake graph raise


class FakeGraph:
    """Answers each image with its own id (its first pixel) and records the batches it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        ids = [int(i) for i in batch[:, 0, 0, 0]]
        with self.lock:
            self.batches.append(ids)
            self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if POISON in ids:
            raise RuntimeError("poisoned batch\nsecond line stays in the log")
        return {"id": batch[:, 0, 0, 0].astype(np.int64), "double": batch[:, 0, 0, 0].astype(np.int64) * 2}


def image(i: int) -> np.ndarray:
    return np.full((2, 2, 3), i, dtype=np.uint8)


def make(graph: FakeGraph, pool: ThreadPoolExecutor, metrics: Metrics, **kw: Any) -> Batcher:
    opts: dict[str, Any] = {"max_batch_size": 4, "max_delay_s": 0.01, "max_queue": 16, **kw}
    return Batcher("fake", graph, pool, metrics=metrics, **opts)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_answers_go_back_by_position_in_full_batches() -> None:
    """9 images in 5 requests queued at once run as batches of 4, 4 and 1, in arrival order."""
    graph, metrics = FakeGraph(), Metrics(4)
    sizes = [1, 3, 2, 1, 2]

    async def scenario() -> list[list[Any]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(graph, pool, metrics)
            batcher.start()
            jobs, next_id = [], 1
            for n in sizes:
                batcher.reserve(n)
                jobs.append(batcher.submit([image(next_id + k) for k in range(n)]))
                next_id += n
            answers = [await job.future for job in jobs]
            await batcher.close()
        return answers

    answers = run(scenario())
    assert [[int(out["id"]) for out in a] for a in answers] == [[1], [2, 3, 4], [5, 6], [7], [8, 9]]
    assert all(int(out["double"]) == 2 * int(out["id"]) for a in answers for out in a)
    assert graph.batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert sample(metrics, "simpool_batch_size_count", model="fake") == 3
    assert sample(metrics, "simpool_batch_size_sum", model="fake") == 9
    assert sample(metrics, "simpool_queue_depth", model="fake") == 0


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    async def scenario() -> float:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(FakeGraph(), pool, Metrics(4), max_delay_s=3600.0)
            batcher.start()
            start = time.perf_counter()
            batcher.reserve(1)
            await batcher.submit([image(1)]).future
            took = time.perf_counter() - start
            await batcher.close()
        return took

    assert run(scenario(), timeout=10) < 5.0


def test_skipped_images_are_answered_none_and_never_run() -> None:
    graph = FakeGraph()

    async def scenario() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(graph, pool, Metrics(4))
            batcher.start()
            batcher.reserve(3)
            answer = await batcher.submit([image(1), None, image(3)]).future
            batcher.reserve(1)
            empty = await batcher.submit([None]).future
            await batcher.close()
        return [answer, empty]

    answer, empty = run(scenario())
    assert answer[1] is None and int(answer[0]["id"]) == 1 and int(answer[2]["id"]) == 3
    assert empty == [None]
    assert sorted(i for b in graph.batches for i in b) == [1, 3]


def test_a_failing_batch_fails_only_its_requests() -> None:
    graph = FakeGraph()

    async def scenario() -> tuple[list[Any], Batcher]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(graph, pool, Metrics(4), max_batch_size=2)
            batcher.start()
            results = []
            for ids in ([POISON, 1], [2], [3, 4]):
                batcher.reserve(len(ids))
                job = batcher.submit([image(i) for i in ids])
                try:
                    results.append(await job.future)
                except EngineError as exc:
                    results.append(exc)
            failed_after_success = batcher.failed_in_a_row
            batcher.reserve(1)
            with pytest.raises(EngineError):
                await batcher.submit([image(POISON)]).future
            await batcher.close()
        return [*results, failed_after_success], batcher

    (poisoned, second, third, failed_after_success), batcher = run(scenario())
    assert isinstance(poisoned, EngineError) and poisoned.kind is Kind.INTERNAL
    assert "RuntimeError: poisoned batch" in poisoned.detail and "second line" not in poisoned.detail
    assert [int(o["id"]) for o in second] == [2] and [int(o["id"]) for o in third] == [3, 4]
    assert failed_after_success == 0  # a success resets the count
    assert batcher.failed_in_a_row == 1 and batcher.last_failure == "RuntimeError: poisoned batch"


def test_the_queue_is_bounded_and_cancel_drops_queued_images() -> None:
    gate = threading.Event()

    class Held(FakeGraph):
        def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            gate.wait(10)
            return super().__call__(batch)

    graph = Held()

    async def scenario() -> tuple[EngineError, int, list[Any]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(graph, pool, Metrics(4), max_batch_size=1, max_queue=3)
            batcher.start()
            batcher.reserve(1)
            first = batcher.submit([image(1)])  # runs at once and holds the graph
            await asyncio.sleep(0.05)
            batcher.reserve(2)
            queued = batcher.submit([image(2), image(3)])
            with pytest.raises(EngineError) as full:
                batcher.reserve(2)  # 2 queued + 2 > 3
            dropped = batcher.cancel(queued)
            batcher.reserve(1)
            last = batcher.submit([image(4)])
            gate.set()
            answers = [await first.future, await last.future]
            await batcher.close()
        return full.value, dropped, answers

    full, dropped, answers = run(scenario())
    assert full.kind is OVERLOADED and full.retry_after_s == 1
    assert dropped == 2
    assert [int(a[0]["id"]) for a in answers] == [1, 4]
    assert [2] not in graph.batches and [3] not in graph.batches


def test_close_answers_everything_queued_then_refuses() -> None:
    async def scenario() -> tuple[list[Any], EngineError]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(FakeGraph(), pool, Metrics(4), max_delay_s=3600.0)
            batcher.start()
            jobs = []
            for i in range(1, 7):
                batcher.reserve(1)
                jobs.append(batcher.submit([image(i)]))
            await batcher.close()
            answers = [job.future.result() for job in jobs]  # all done once close returns
            with pytest.raises(EngineError) as refused:
                batcher.reserve(1)
        return answers, refused.value

    answers, refused = run(scenario())
    assert [int(a[0]["id"]) for a in answers] == [1, 2, 3, 4, 5, 6]
    assert refused.kind is NOT_READY


def test_lanes_run_batches_at_once_and_a_lone_batch_on_every_thread() -> None:
    """With work for several batches, `lane_run` runs them side by side; a lone batch gets `run`."""
    solo, lane = FakeGraph(delay_s=0.05), FakeGraph(delay_s=0.05)

    async def scenario() -> None:
        with ThreadPoolExecutor(2, thread_name_prefix="lane") as pool:
            batcher = make(solo, pool, Metrics(4), max_batch_size=2, lane_run=lane, lanes=2)
            batcher.start()
            batcher.reserve(1)
            await batcher.submit([image(1)]).future  # idle model, one image: all threads
            batcher.reserve(8)
            await batcher.submit([image(i) for i in range(10, 18)]).future
            await batcher.close()

    run(scenario())
    assert solo.batches[0] == [1]
    assert len(lane.batches) >= 2 and all(len(b) <= 2 for b in lane.batches)
    assert len(lane.threads) == 2  # two lanes at once, each on its own thread
    assert sorted(i for b in solo.batches + lane.batches for i in b) == [1, *range(10, 18)]


def test_a_stopped_batcher_refuses_and_answers_its_queue() -> None:
    async def scenario() -> tuple[EngineError, EngineError]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(FakeGraph(), pool, Metrics(4))
            with pytest.raises(EngineError) as not_started:
                batcher.reserve(1)
            batcher.start()
            assert batcher.alive
            assert batcher._task is not None
            batcher._task.cancel()  # the loop killed from outside
            await asyncio.sleep(0.01)
            assert not batcher.alive
            with pytest.raises(EngineError) as stopped:
                batcher.reserve(1)
        return not_started.value, stopped.value

    not_started, stopped = run(scenario())
    assert not_started.kind is NOT_READY and stopped.kind is NOT_READY


class ShapeGraph:
    """Records each batch's shape and scale, and refuses a batch that mixes shapes (as a graph does)."""

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], float, list[int]]] = []

    def __call__(self, batch: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
        self.batches.append((batch.shape[1:], scale, [int(i) for i in batch[:, 0, 0, 0]]))
        return {"id": batch[:, 0, 0, 0].astype(np.int64)}


def test_a_batch_holds_one_shape_and_one_scale() -> None:
    """Full views keep their aspect ratio: 4:3, 3:4 and square images, at two scales, queued at once,
    run as batches of equal shape and scale only, each image answered by its own request."""
    graph = ShapeGraph()
    shapes = [(3, 4), (4, 3), (3, 4), (4, 4), (4, 3), (3, 4)]

    async def scenario() -> list[list[int]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher("fake", graph, pool, max_batch_size=4, max_delay_s=0.05, max_queue=32,
                              metrics=Metrics(4))  # fmt: skip
            batcher.start()
            jobs = []
            for scale in (1.0, 0.5):
                for i, (h, w) in enumerate(shapes):
                    batcher.reserve(1)
                    jobs.append(batcher.submit([np.full((h, w, 3), i + 1, np.uint8)], scale=scale))
            answers = [[int(out["id"]) for out in await job.future] for job in jobs]
            await batcher.close()
        return answers

    answers = run(scenario())
    assert answers == [[i + 1] for i in range(len(shapes))] * 2
    seen = [(shape, scale) for shape, scale, _ in graph.batches]
    assert len(seen) == len(set(seen)) == 6  # three shapes × two scales, each run once
    for shape, scale, ids in graph.batches:
        assert all(shapes[i - 1] == shape[:2] for i in ids), (shape, scale, ids)
    assert sum(len(ids) for _, _, ids in graph.batches) == 12


def test_a_lone_image_at_an_idle_model_runs_alone_in_one_thread_job() -> None:
    """`run_alone`: the preparation and the graph run in the same inference thread, one after the other;
    an image submitted meanwhile waits for it (the model is busy), then runs; metrics count both."""
    graph, metrics = FakeGraph(delay_s=0.05), Metrics(4)
    seen: list[str] = []

    def prepare() -> tuple[np.ndarray, str]:
        seen.append(threading.current_thread().name)
        return image(7), "geometry"

    async def scenario() -> tuple[Any, Any, bool, bool]:
        with ThreadPoolExecutor(2, thread_name_prefix="infer") as pool:
            batcher = make(graph, pool, metrics, max_delay_s=0.0)
            batcher.start()
            batcher.reserve(1)
            assert batcher.idle_for(1) and not batcher.idle_for(2)
            job = batcher.run_alone(prepare)
            busy = not batcher.idle_for(0)
            batcher.reserve(1)
            other = batcher.submit([image(8)])
            answers = await job.future
            await other.future
            await asyncio.sleep(0.05)  # the batch's task ends after its answers are out
            idle_again = batcher.idle_for(0)
            await batcher.close()
        return answers, job.prepared, busy, idle_again

    answers, prepared, busy, idle_again = run(scenario())
    assert [int(a["id"]) for a in answers] == [7] and prepared == "geometry"
    assert busy and idle_again
    assert graph.batches == [[7], [8]]  # one after the other, never side by side
    assert seen and seen[0] in graph.threads
    assert sample(metrics, "simpool_batch_size_count", model="fake") == 2


def test_run_alone_reports_the_preparation_and_the_graph_failures_apart() -> None:
    """A failed preparation (the decode) comes back as its own error; a failed graph as a batch's
    inference error, counted towards readiness."""
    graph = FakeGraph()

    def bad_image() -> tuple[np.ndarray, None]:
        raise ValueError("not an image")

    async def scenario() -> tuple[BaseException | None, BaseException | None, int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(graph, pool, Metrics(4))
            batcher.start()
            errors = []
            for prepare in (bad_image, lambda: (image(POISON), None)):
                batcher.reserve(1)
                errors.append(await asyncio.gather(batcher.run_alone(prepare).future, return_exceptions=True))
            failed = batcher.failed_in_a_row
            await batcher.close()
        return errors[0][0], errors[1][0], failed

    decode_error, graph_error, failed = run(scenario())
    assert isinstance(decode_error, ValueError) and str(decode_error) == "not an image"
    assert isinstance(graph_error, EngineError) and graph_error.kind == Kind.INTERNAL
    assert failed == 1
