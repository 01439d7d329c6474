"""The three doors side by side on the same image: images/s at 32 clients and a lone request's latency.

One server, one model, one 500x375 JPEG per request, sent as each door's clients send it:
  REST  /embed            JSON base64, and multipart (a file part)
  v2    /v2/.../infer     binary tensor data (as tritonclient sends it), and JSON (base64 BYTES)
  v1    /v1/embeddings    JSON data URI, base64 answer (the openai SDK's default)
The doors run in turns, round after round, so the machine's drift over minutes spreads over all of them.

    python bench/doors.py --model-dir model_repository --model resnet50_simpool
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from launch import serve
from run import bench_image, hey

from simpool_serve.service.oip.codec import serialize_bytes


@dataclass(frozen=True)
class Door:
    name: str
    path: str
    body: bytes
    content_type: str
    headers: tuple[str, ...] = ()


def doors(model: str, jpeg: bytes) -> list[Door]:
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
    return [
        Door(
            "REST JSON", "/embed", json.dumps({"images": [b64], "model": model}).encode(), "application/json"
        ),
        Door("REST multipart", "/embed", form, f"multipart/form-data; boundary={boundary}"),
        Door(
            "v2 binary",
            infer,
            header + tensor,
            "application/octet-stream",
            (f"Inference-Header-Content-Length: {len(header)}",),
        ),
        Door("v2 JSON", infer, json.dumps(v2_json).encode(), "application/json"),
        Door("OpenAI", "/v1/embeddings", json.dumps(openai).encode(), "application/json"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="load duration of each door in each round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lone-seconds", type=float, default=8.0)
    p.add_argument("--provider", default="CPUExecutionProvider")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("bench needs `hey` (Debian: apt-get install hey)")

    tmp = Path(tempfile.mkdtemp(prefix="simpool-doors-"))
    table = doors(args.model, bench_image())
    bodies = {}
    for i, door in enumerate(table):
        bodies[door.name] = tmp / f"body{i}"
        bodies[door.name].write_bytes(door.body)
    env = {"SIMPOOL_PROVIDERS": args.provider, "SIMPOOL_MAX_QUEUE": "1024"}
    loaded: dict[str, list[dict]] = {d.name: [] for d in table}
    lone: dict[str, dict] = {}
    with serve(args.model_dir, env, tmp / "serve.log") as server:
        url = server.url

        def run(door: Door, clients: int, seconds: float, qps: float | None = None) -> dict:
            return hey(
                url + door.path, bodies[door.name], clients, seconds, qps, door.content_type, door.headers
            )

        for door in table:  # each door answers once before anything is measured
            warm = run(door, 2, 1.0)
            if warm["ok"] == 0:
                raise SystemExit(f"{door.name}: no 200 answer; see {tmp / 'serve.log'}")
        for _ in range(args.rounds):
            for door in table:
                loaded[door.name].append(run(door, args.clients, args.seconds))
        for door in table:
            lone[door.name] = run(door, 1, args.lone_seconds, qps=4)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model}"
    )
    print(
        f"{args.clients} clients: {args.rounds} rounds of {args.seconds:g} s per door; "
        "lone: 1 client, 4 req/s\n"
    )
    print(f"| door | images/s at {args.clients} clients | p50 ms | p99 ms | lone p50 ms | lone p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    figures = {}
    for door in table:
        runs = loaded[door.name]
        ips = statistics.mean(r["images_per_s"] for r in runs)
        p50 = statistics.mean(r["p50_ms"] for r in runs)
        p99 = statistics.mean(r["p99_ms"] for r in runs)
        one = lone[door.name]
        figures[door.name] = {"loaded": runs, "lone": one}
        print(
            f"| {door.name} | {ips:.1f} | {p50:.0f} | {p99:.0f} | {one['p50_ms']:.1f} | {one['p99_ms']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
