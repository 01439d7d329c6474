"""Prometheus metrics of one app, on its own registry (never the process-global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """All metric families of the service; label values are bounded (known endpoints and models only)."""

    def __init__(self, max_batch_size: int) -> None:
        # No `*_created` series beside every counter and histogram: one more series per label set that
        # dashboards never use (prometheus_client's switch is process-wide; it is read at each scrape).
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "simpool_requests", "Requests answered, by endpoint, model, HTTP status and API key name.",
            ["endpoint", "model", "code", "key"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "simpool_request_duration_seconds", "Time from request start to answer, by endpoint.",
            ["endpoint"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, max_batch_size})
        self.batch_size = Histogram(
            "simpool_batch_size", "Images per executed batch.", ["model"],
            buckets=[s for s in sizes if s <= max_batch_size], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("simpool_queue_depth", "Images waiting for a batch.", ["model"], registry=r)
        self.inference_duration = Histogram(
            "simpool_inference_duration_seconds", "Time onnxruntime takes per batch.", ["model"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "simpool_stage_duration_seconds",
            "Seconds per stage: decode, queue_wait (per image), inference (per batch), encode (per request).",
            ["model", "stage"], buckets=_STAGE, registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "simpool_failures", "Failed requests (or skipped images), by reason.", ["model", "reason"],
            registry=r,
        )  # fmt: skip
        self.images = Counter("simpool_images", "Images answered.", ["model"], registry=r)
        self.model_info = Gauge(
            "simpool_model_info", "1 per served model, with its execution provider and fingerprint.",
            ["model", "provider", "fingerprint"], registry=r,
        )  # fmt: skip
        self.model_loads = Counter(
            "simpool_model_loads",
            "Model loads and reloads: loaded (a new model), reloaded (a new version swapped in), failed (the "
            "serving version, if any, kept).",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.ready = Gauge("simpool_ready", "1 once every model is loaded and warmed up.", registry=r)
