"""Where an image's CPU goes, stage by stage, and the ceiling that puts on the service/offline ratio.

In one process, in turns (this machine's speed drifts), with the CPU time of the measuring thread:
  - decode: the service's own decode stage (base64 text → JPEG bytes → pixels, resize and crop),
  - encode: the REST answer for one embedding (normalise, orjson),
  - graph: the graph per image on one single-thread lane session at the lane batch, per model.
On a machine whose cores the graph, decoding and the HTTP loop share, the service can answer at most
graph / (graph + decode + encode + loop) of the graph's offline images/s; `--loop-ms` is the event
loop's CPU per request as `bench/run.py` reports it (its "loop" column).

    python bench/costs.py --model-dir model_repository --models resnet50_simpool,resnet50_simpool_int8
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from traffic import bench_image

from simpool_serve.service import encoding
from simpool_serve.service.engine.decode import payload_bytes
from simpool_serve.service.engine.preprocess import decode
from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.spec import EMBEDDING, load_manifest


def cpu_ms(work: Callable[[], object], repeat: int) -> float:
    """CPU milliseconds of this thread per call of `work`."""
    start = time.thread_time()
    for _ in range(repeat):
        work()
    return (time.thread_time() - start) * 1e3 / repeat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--models", default="resnet50_simpool")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="the lane batch")
    p.add_argument("--loop-ms", type=float, default=1.5, help="event-loop CPU per request (bench/run.py)")
    args = p.parse_args(argv)

    names = args.models.split(",")
    manifest = load_manifest(args.model_dir / names[0] / "manifest.json")
    text = base64.b64encode(bench_image()).decode()
    pixels = decode(payload_bytes(text, 1 << 30), manifest, 1 << 30)[0]
    batch = np.stack([pixels] * args.batch)
    runners = {n: OnnxRunner(args.model_dir / n / "model.onnx", ["CPUExecutionProvider"], 1) for n in names}
    outputs = {n: r.run(batch) for n, r in runners.items()}
    answer = [{EMBEDDING: outputs[names[0]][EMBEDDING][0]}]

    samples: dict[str, list[float]] = {"decode": [], "encode": [], **{n: [] for n in names}}
    for _ in range(args.rounds):
        samples["decode"].append(cpu_ms(lambda: decode(payload_bytes(text, 1 << 30), manifest, 1 << 30), 20))
        samples["encode"].append(
            cpu_ms(
                lambda: encoding.json_bytes({"embeddings": encoding.embeddings(answer, True, "float")}), 200
            )
        )
        for name, runner in runners.items():
            samples[name].append(cpu_ms(lambda r=runner: r.run(batch), 2) / args.batch)

    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\nCPU ms per image (median of {args.rounds} rounds, in turns; range in brackets)\n")
    print("| stage | CPU ms/image |\n|---|---:|")
    for key, values in samples.items():
        label = f"graph {key}" if key in runners else key
        print(f"| {label} | {med[key]:.2f} ({min(values):.2f}-{max(values):.2f}) |")
    overhead = med["decode"] + med["encode"] + args.loop_ms
    print(f"\nper-image overhead: decode + encode + loop ({args.loop_ms:g}) = {overhead:.2f} ms")
    print("| model | graph ms | overhead / graph | ceiling of service / offline |\n|---|---:|---:|---:|")
    for name in names:
        g = med[name]
        print(f"| {name} | {g:.1f} | {overhead / g:.3f} | {g / (g + overhead):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
