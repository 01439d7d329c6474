"""Where a lone request's milliseconds go: timestamps along its path through a real `simpool-serve`.

The server runs in a child process with probes wrapped around the functions that bound each stage
(uvicorn's protocol, the request middleware, the door path, the engine, the decode's steps, the graph
run, the answer's write); each probe appends `time.perf_counter_ns()`, which is CLOCK_MONOTONIC on
Linux, the clock this process times its client with, so the client's and the server's timestamps lie
on one axis. Each round sends one request after `--gap` idle seconds and, after the same gap, runs the
graph's batch 1 in this process; the table gives each stage's median and quartiles, the sum outside
the graph, and the lone request minus the paired graph run.

    python bench/lone_stages.py --model-dir model_repository --model resnet50_simpool --pairs 30

The probes cost about a microsecond each; the stages are the function boundaries of this version of
the code (a renamed function stops the run with the name it could not find).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import inspect
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from launch import serve
from traffic import DOOR_NAMES, Door, OneClient, bench_image, doors

from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.spec import load_manifest

GRAPH = "the graph (batch 1)"
OWN_GRAPH = "the graph's batch 1 in this process"
# The stages, in the order a request passes their boundaries: (boundary it starts at, stage name).
STAGES = [
    ("client", "client → server: the request's first bytes reach uvicorn"),
    ("recv", "the body read (uvicorn)"),
    ("body", "middleware and routing, to the door"),
    ("door", "door: read and parse, the model's lease, to the engine"),
    ("engine", "engine → an inference thread (one hand-off)"),
    ("thread", "decode: base64"),
    ("b64", "decode: header, marker scan"),
    ("opened", "decode: JPEG, EXIF orientation"),
    ("loaded", "decode: resize and crop"),
    ("prepared", "decode: the array, the decode's metrics, to the graph"),
    ("graph", GRAPH),
    ("graph_end", "inference thread → event loop (one hand-off)"),
    ("loop", "engine: the answer's outputs and metrics"),
    ("engine_out", "door: encode the answer"),
    ("encoded", "response: its headers, through the middleware"),
    ("sent", "its body written, read by the client"),
    ("client_end", ""),
]


def install_probes(stamps: list[tuple[str, int]]) -> None:
    """Wraps the functions that bound each stage (in the server's process) so they stamp `stamps`."""
    from uvicorn.protocols.http import httptools_impl as uv

    from simpool_serve.service import http_door
    from simpool_serve.service.engine import batcher, decode, engine, preprocess

    def stamp(name: str) -> None:
        stamps.append((name, time.perf_counter_ns()))

    def around(owner: Any, attr: str, before: str | None, after: str | None) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def sync(*args: Any, **kwargs: Any) -> Any:
            if before:
                stamp(before)
            out = original(*args, **kwargs)
            if after:
                stamp(after)
            return out

        @functools.wraps(original)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            if before:
                stamp(before)
            out = await original(*args, **kwargs)
            if after:
                stamp(after)
            return out

        setattr(owner, attr, coro if inspect.iscoroutinefunction(original) else sync)

    around(uv.HttpToolsProtocol, "data_received", "recv", None)
    around(uv.HttpToolsProtocol, "on_message_complete", "body", None)
    around(http_door, "serve", "door", "encoded")
    around(engine.Engine, "_run", "engine", "engine_out")
    around(decode, "payload_bytes", "thread", "b64")
    around(preprocess, "open_image", None, "opened")
    around(preprocess, "load_opened", None, "loaded")
    around(preprocess, "prepare", None, "prepared")
    around(batcher.Batcher, "_on_alone_done", "loop", None)
    original_infer = batcher.Batcher._infer

    def infer(run: Callable[[np.ndarray], Any], pixels: list[np.ndarray]) -> Any:
        def timed(batch: np.ndarray) -> Any:
            stamp("graph")
            out = run(batch)
            stamp("graph_end")
            return out

        return original_infer(timed, pixels)

    batcher.Batcher._infer = staticmethod(infer)  # type: ignore[method-assign]
    original_send = uv.RequestResponseCycle.send

    async def send(self: Any, message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            stamp("sent")  # before the write: the client may have read the answer before it returns
        await original_send(self, message)

    uv.RequestResponseCycle.send = send  # type: ignore[method-assign]


def serve_probed(out: Path, argv: list[str]) -> int:
    """The child: `simpool-serve argv` with the probes in, its stamps written to `out` at exit."""
    stamps: list[tuple[str, int]] = []
    install_probes(stamps)
    atexit.register(lambda: out.write_text(json.dumps(stamps)))
    from simpool_serve.service.cli import main

    return main(argv)


def rounds_of(client_rows: list[dict], stamps: list[tuple[str, int]]) -> list[dict[str, float]]:
    """Per lone request: each stage's milliseconds (the first stamp of each boundary within the request)."""
    out = []
    for row in client_rows:
        first: dict[str, int] = {"client": row["start"], "client_end": row["end"]}
        for name, t in stamps:
            if row["start"] <= t <= row["end"]:
                first.setdefault(name, t)
        missing = [b for b, _ in STAGES if b not in first]
        if missing:
            raise SystemExit(f"no stamp for {missing}: was the request served alone (an idle model)?")
        stages = {
            label: (first[nxt] - first[b]) / 1e6
            for (b, label), (nxt, _) in itertools.pairwise(STAGES)
            if label
        }
        stages["total"] = (row["end"] - row["start"]) / 1e6
        stages[OWN_GRAPH] = row["graph_ms"]
        out.append(stages)
    return out


def table(rows: list[dict[str, float]]) -> str:
    def cell(values: list[float]) -> str:
        q1, med, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        return f"{med:.2f} ({q1:.2f}–{q3:.2f})"

    lines = ["| stage | ms, median (quartiles) |", "|---|---:|"]
    for label in rows[0]:
        if label not in ("total", OWN_GRAPH):
            lines.append(f"| {label} | {cell([r[label] for r in rows])} |")
    outside = [r["total"] - r[GRAPH] for r in rows]
    lines.append(f"| **sum outside the graph** | **{cell(outside)}** |")
    lines.append(f"| the lone request | {cell([r['total'] for r in rows])} |")
    lines.append(f"| {OWN_GRAPH}, after the same gap | {cell([r[OWN_GRAPH] for r in rows])} |")
    paired = [r["total"] - r[OWN_GRAPH] for r in rows]
    lines.append(f"| **lone minus the graph's batch 1 (paired)** | **{cell(paired)}** |")
    return "\n".join(lines)


def paired_rounds(
    client: OneClient, door: Door, graph: OnnxRunner, side: int, pairs: int, gap: float
) -> list[dict[str, Any]]:
    """`pairs` rounds (after two that warm every path), each a lone request (its start and end, ns)
    and the graph's batch 1 in this process (ms), each after `gap` idle seconds, in alternating order."""
    x = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), np.uint8)
    rows = []
    for i in range(pairs + 2):
        row: dict[str, Any] = {}
        for which in ("lone", "graph") if i % 2 else ("graph", "lone"):
            time.sleep(gap)
            if which == "lone":
                row["start"] = time.perf_counter_ns()
                client.seconds(door)
                row["end"] = time.perf_counter_ns()
            else:
                start = time.perf_counter()
                graph.run(x)
                row["graph_ms"] = (time.perf_counter() - start) * 1e3
        if i >= 2:
            rows.append(row)
    client.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool")
    p.add_argument("--door", default="REST JSON", choices=[d for d in DOOR_NAMES if d != "gRPC"])
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--gap", type=float, default=0.25, help="idle seconds before each request and graph run")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra service setting")
    p.add_argument("--json", type=Path, help="also write every round's stages here")
    a = p.parse_args()
    folder = a.model_dir / a.model
    manifest = load_manifest(folder / "manifest.json")
    with tempfile.TemporaryDirectory(prefix="lone-stages-") as tmp:
        repo, out = Path(tmp, "repo"), Path(tmp, "stamps.json")
        repo.mkdir()
        (repo / a.model).symlink_to(folder.resolve())
        env = {"SIMPOOL_GRPC_PORT": "0", **dict(kv.split("=", 1) for kv in a.env)}
        probed = [sys.executable, __file__, "--serve-probed", str(out)]
        with serve(repo, env, Path(tmp, "serve.log"), program=probed) as server:
            door = next(d for d in doors(a.model, bench_image()) if d.name == a.door)
            graph = OnnxRunner(folder / "model.onnx", None, os.cpu_count() or 1)
            rows = paired_rounds(OneClient(server.url), door, graph, manifest.input_size, a.pairs, a.gap)
        stages = rounds_of(rows, json.loads(out.read_text()))
    print(
        f"\n{a.model}, {a.door}, one 500×375 JPEG per request, {a.pairs} rounds, {a.gap:g} s idle before "
        f"each request and each graph run ({os.cpu_count()} cores)\n"
    )
    print(table(stages))
    if a.json:
        a.json.write_text(json.dumps(stages, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-probed":
        sys.exit(serve_probed(Path(sys.argv[2]), sys.argv[3:]))
    main()
