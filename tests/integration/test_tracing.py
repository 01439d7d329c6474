"""Tracing, end to end: a real server exports OTLP/HTTP protobuf to a real receiver in this test.

Requests on every HTTP door carry a W3C `traceparent`; each trace must hold the door's server span (a
child of the caller's span) and, under it, the engine's `simpool.decode`, `simpool.queue` and
`simpool.inference` spans, the last with its batch's size and links to its batch-mates. A failure is
recorded on the span, and the request's log line names its trace.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.helpers import Server, free_port, start_server

ENGINE_SPANS = {"simpool.decode", "simpool.queue", "simpool.inference"}


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, names: set[str], timeout: float = 60) -> list[Any]:
        """The spans of `trace_id` once every name in `names` has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if names <= {s.name for s in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)


@pytest.fixture(scope="module")
def traced(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Receiver, int]]:
    receiver, grpc_port = Receiver(), free_port()
    env = {
        "SIMPOOL_DEFAULT_MODEL": "resnet18",
        "SIMPOOL_MAX_BATCH_DELAY_MS": "300",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "simpool-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SIMPOOL_GRPC_PORT": str(grpc_port),
    }
    with start_server(model_repo, tmp_path_factory.mktemp("traced-logs"), env) as server:
        yield server, receiver, grpc_port
    receiver.server.shutdown()


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def door_requests(photo: bytes) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each door's route (the server span's name) → its path and JSON body."""
    b64 = base64.b64encode(photo).decode()
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [b64]}
    return {
        "/embed": ("/embed", {"images": [b64]}),
        "/v2/models/{model}/infer": ("/v2/models/resnet18/infer", {"inputs": [tensor]}),
        "/v1/embeddings": ("/v1/embeddings", {"model": "resnet18", "input": b64}),
    }


def check_trace(spans: list[Any], parent: str) -> Any:
    (server_span,) = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert server_span.parent_span_id.hex() == parent  # continues the caller's trace
    attrs = {a.key: a.value for a in server_span.attributes}
    assert attrs["simpool.model"].string_value == "resnet18" and attrs["simpool.images"].int_value == 1
    assert len(attrs["simpool.fingerprint"].string_value) > 8
    children = {s.name: s for s in spans if s.parent_span_id == server_span.span_id}
    assert set(children) >= ENGINE_SPANS, sorted(children)
    inference = {a.key: a.value for a in children["simpool.inference"].attributes}
    assert inference["batch_size"].int_value >= 1
    return children["simpool.inference"]


def test_a_trace_from_every_door(traced: tuple[Server, Receiver, int], photos: dict[str, Path]) -> None:
    server, receiver, _ = traced
    photo = photos["coffee.jpg"].read_bytes()
    sent = {}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for route, (path, body) in door_requests(photo).items():
            trace_id, parent, header = traceparent()
            assert c.post(path, headers={"traceparent": header}, json=body).status_code == 200, route
            sent[route] = (trace_id, parent)
    for route, (trace_id, parent) in sent.items():
        check_trace(receiver.trace(trace_id, ENGINE_SPANS | {f"POST {route}"}), parent)
    # The request's JSON log line names its trace.
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    logged = {line.get("trace_id") for line in lines if line.get("msg") == "request"}
    assert {trace_id for trace_id, _ in sent.values()} <= logged


def test_a_trace_from_the_grpc_door(traced: tuple[Server, Receiver, int], photos: dict[str, Path]) -> None:
    import tritonclient.grpc as triton_grpc

    _, receiver, grpc_port = traced
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    photo = photos["coffee.jpg"].read_bytes()
    tensor = triton_grpc.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
    trace_id, parent, header = traceparent()
    client.infer("resnet18", [tensor], headers={"traceparent": header})
    check_trace(receiver.trace(trace_id, ENGINE_SPANS | {"grpc:ModelInfer"}), parent)


def test_batch_mates_are_linked_and_errors_recorded(
    traced: tuple[Server, Receiver, int], photos: dict[str, Path]
) -> None:
    server, receiver, _ = traced
    photo = photos["astronaut.jpg"].read_bytes()
    b64 = base64.b64encode(photo).decode()
    heads = [traceparent() for _ in range(3)]

    def post(header: str, images: int = 1) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.post(
                "/embed", json={"images": [b64] * images}, headers={"traceparent": header}
            ).status_code

    busy_trace, _, busy_header = traceparent()
    with ThreadPoolExecutor(4) as pool:
        busy = pool.submit(post, busy_header, 4)  # occupies the model, so the next three queue up
        time.sleep(0.05)
        mates = [pool.submit(post, header) for _, _, header in heads]
        assert busy.result() == 200 and all(m.result() == 200 for m in mates)
    inference = [check_trace(receiver.trace(t, ENGINE_SPANS | {"POST /embed"}), p) for t, p, _ in heads]
    batched = [
        span for span in inference if {a.key: a.value for a in span.attributes}["batch_size"].int_value > 1
    ]
    assert batched, "the three queued requests never shared a batch"
    # A single-image request in a batch of several ran with other requests: it links to their traces.
    ours = {bytes.fromhex(t) for t, _, _ in heads} | {bytes.fromhex(busy_trace)}
    for span in batched:
        assert span.links and all(link.trace_id in ours for link in span.links)
        assert all(link.trace_id != span.trace_id for link in span.links)

    trace_id, _, header = traceparent()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        bad = c.post("/embed", json={"images": ["bm90IGFuIGltYWdl"]}, headers={"traceparent": header})
    assert bad.status_code == 400
    spans = receiver.trace(trace_id, {"simpool.decode", "POST /embed"})
    (server_span,) = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    events = [e for e in server_span.events if e.name == "exception"]
    assert events and "image 0" in str(events[0].attributes)
