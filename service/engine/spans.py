"""The engine's spans in a traced request: `simpool.decode`, `simpool.queue`, `simpool.inference`.

Imported only when tracing is on (the engine is handed a tracer). Each span is a child of the door's
server span (the current span when the engine runs); an inference span records its batch's size and
links to the other traced requests that ran in the same batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, Tracer

from simpool_serve.service.engine.batcher import Job


class RequestSpans:
    """The spans of one request through one model."""

    def __init__(self, tracer: Tracer, model: str, fingerprint: str, images: int) -> None:
        self.tracer = tracer
        self.attributes = {
            "simpool.model": model,
            "simpool.fingerprint": fingerprint,
            "simpool.images": images,
        }

    @contextmanager
    def decode(self) -> Iterator[None]:
        """Decoding the request's images (failures are recorded on the span by the SDK)."""
        with self.tracer.start_as_current_span("simpool.decode", attributes=self.attributes):
            yield

    @staticmethod
    def context() -> SpanContext:
        """The current (server) span's context: the job carries it to its batches."""
        return trace.get_current_span().get_span_context()

    def batches(self, job: Job, queued_ns: int) -> None:
        """The waiting and the batches of a finished job, with the times the batcher recorded."""
        if not job.batches:
            return
        first = min(run.start_ns for run in job.batches)
        queue = self.tracer.start_span("simpool.queue", start_time=queued_ns, attributes=self.attributes)
        queue.end(end_time=first)
        for run in job.batches:
            links = [Link(t) for t in run.traces if t is not job.trace and isinstance(t, SpanContext)]
            span = self.tracer.start_span(
                "simpool.inference",
                start_time=run.start_ns,
                links=links,
                attributes={**self.attributes, "batch_size": run.size},
            )
            span.end(end_time=run.end_ns)
