"""What the benchmarks send: a real photograph, each door's request for it, and the clients that send it.

Every door of the engine gets the same JPEG, encoded the way its own clients encode it:
  REST JSON        /embed, base64 in JSON (`simpool-embed`, curl)
  REST multipart   /embed, a file part
  v2 binary        /v2/models/{m}/infer, binary tensor data (as tritonclient sends it)
  v2 JSON          /v2/models/{m}/infer, base64 BYTES in a JSON tensor
  OpenAI           /v1/embeddings, a data URI, base64 answer (the openai SDK's default)
  gRPC             the Open Inference Protocol's `ModelInfer`, the file in `raw_input_contents` (as
                   tritonclient.grpc sends it), on the server's gRPC port
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from simpool_serve.service.oip.codec import serialize_bytes

GRPC_LOAD = Path(__file__).with_name("grpc_load.py")


def bench_image(width: int = 500, height: int = 375) -> bytes:
    """A real photograph (scikit-image's cat) as a JPEG of the benchmark's size."""
    import skimage.data

    img = Image.fromarray(skimage.data.chelsea()).resize((width, height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass(frozen=True)
class Door:
    name: str
    path: str
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    grpc: bool = False  # `body` is a serialised ModelInferRequest for the gRPC port


def grpc_request(model: str, jpeg: bytes) -> bytes:
    """`ModelInfer` for one JPEG as tritonclient.grpc builds it: BYTES [1] in raw_input_contents."""
    from simpool_serve.service.grpc.stubs import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="BYTES", shape=[1])
    request.outputs.add(name="embedding")
    request.parameters["normalize"].bool_param = True
    request.raw_input_contents.append(serialize_bytes([jpeg]))
    return request.SerializeToString()


def doors(model: str, jpeg: bytes) -> list[Door]:
    """One request per door for `jpeg`, each asking for the normalised embedding."""
    b64 = base64.b64encode(jpeg).decode()
    boundary = "simpoolbench"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    tensor = serialize_bytes([jpeg])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
            "parameters": {"normalize": True},
        }
    ).encode()
    v2_json = {
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64]}],
        "outputs": [{"name": "embedding"}],
        "parameters": {"normalize": True},
    }
    openai = {"model": model, "input": f"data:image/jpeg;base64,{b64}", "encoding_format": "base64"}
    infer = f"/v2/models/{model}/infer"
    rest = json.dumps({"images": [b64], "model": model}).encode()
    return [
        Door("REST JSON", "/embed", rest, "application/json"),
        Door("REST multipart", "/embed", form, f"multipart/form-data; boundary={boundary}"),
        Door(
            "v2 binary",
            infer,
            header + tensor,
            "application/octet-stream",
            (("Inference-Header-Content-Length", str(len(header))),),
        ),
        Door("v2 JSON", infer, json.dumps(v2_json).encode(), "application/json"),
        Door("OpenAI", "/v1/embeddings", json.dumps(openai).encode(), "application/json"),
        Door("gRPC", "ModelInfer", grpc_request(model, jpeg), "application/grpc", grpc=True),
    ]


DOOR_NAMES = [d.name for d in doors("m", b"")]


def _summary(rows: list[tuple[float, float]], requests: int, wall: float) -> dict:
    """What a load run reports: answered calls (offset, seconds) → images/s, p50, p99."""
    ok = [seconds for _, seconds in rows]
    # Throughput over the span in which requests were answered, not the client's start-up.
    end = max((offset + seconds for offset, seconds in rows), default=wall)
    return {
        "requests": requests,
        "ok": len(ok),
        "images_per_s": len(ok) / end if end else 0.0,
        "p50_ms": float(np.percentile(ok, 50) * 1e3) if ok else float("nan"),
        "p99_ms": float(np.percentile(ok, 99) * 1e3) if ok else float("nan"),
    }


def grpc_load(address: str, body: Path, concurrency: int, seconds: float) -> dict:
    """`bench/grpc_load.py` in its own process: the gRPC door's `hey`."""
    cmd = [sys.executable, str(GRPC_LOAD), address, str(body), str(concurrency), str(seconds)]
    t0 = time.perf_counter()
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return _summary([tuple(r) for r in out["answered"]], out["requests"], time.perf_counter() - t0)


def hey(
    url: str,
    door: Door,
    body: Path,
    concurrency: int,
    seconds: float,
    qps: float | None = None,
    grpc_address: str | None = None,
) -> dict:
    """Debian's `hey` (a Go load generator: little CPU taken from the cores being measured) sends
    `body` (the door's request, in a file) for `seconds`; only 200s count as served. A gRPC door's
    load comes from `grpc_load` at `grpc_address` instead."""
    if door.grpc:
        if grpc_address is None or qps:
            raise ValueError("the gRPC door needs the server's gRPC address, and takes no qps")
        return grpc_load(grpc_address, body, concurrency, seconds)
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", door.content_type]
    for name, value in door.headers:
        cmd += ["-H", f"{name}: {value}"]
    if qps:
        cmd += ["-q", str(qps)]
    cmd += ["-D", str(body), "-o", "csv", "-t", "60", url + door.path]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(io.StringIO(out)))
    answered = [(float(r["offset"]), float(r["response-time"])) for r in rows if r["status-code"] == "200"]
    summary = _summary(answered, len(rows), wall)
    summary["statuses"] = dict(Counter(r["status-code"] or "none" for r in rows))  # what the failures were
    return summary


class OneClient:
    """One keep-alive connection (and one gRPC channel) that sends a door's request and times the
    whole answer (a lone user)."""

    def __init__(self, url: str, grpc_address: str | None = None) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        self._channel = None
        if grpc_address is not None:
            import grpc

            self._channel = grpc.insecure_channel(grpc_address)
            self._infer = self._channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    def seconds(self, door: Door) -> float:
        if door.grpc:
            if self._channel is None:
                raise RuntimeError("gRPC door without a gRPC address")
            start = time.perf_counter()
            self._infer(door.body, timeout=60)  # bytes out, bytes back; an error raises
            return time.perf_counter() - start
        headers = {"Content-Type": door.content_type, **dict(door.headers)}
        for attempt in (1, 2):  # the server closes a keep-alive connection idle for 5 s: reconnect once
            start = time.perf_counter()
            try:
                self._conn.request("POST", door.path, door.body, headers)
                response = self._conn.getresponse()
                response.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self._conn.close()
                if attempt == 2:
                    raise
                continue
            break
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"{door.name}: HTTP {response.status}")
        return elapsed

    def close(self) -> None:
        self._conn.close()
        if self._channel is not None:
            self._channel.close()
