"""Service vs. offline throughput, side by side in one run.

Measures, for one exported model:
  1. the graph's own offline throughput: the service's runner called directly on already
     preprocessed uint8 batches, one session at several batch sizes, and the service's
     CPU layout under load (two single-thread lanes at once); the best is the bar;
  2. the graph's batch-1 latency (the floor for a lone request);
  3. `simpool-serve` under 1, 8, 32 and 128 concurrent single-image clients
     (Debian's `hey`, a Go load generator that costs far less CPU than a Python one),
     with p50/p99 latency and the ratio service / offline, the bar re-measured right
     before each row (this machine's speed drifts over minutes).

Both sides run on the same machine with the same thread budget, so the ratio is
what the service's own overhead (HTTP, JSON, decoding, batching) costs.

    python bench/run.py --model-dir model_repository --model resnet50_simpool
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from launch import serve
from PIL import Image

from simpool_serve.service.engine import ThreadPlan
from simpool_serve.service.engine.runner import OnnxRunner
from simpool_serve.service.settings import Settings
from simpool_serve.spec import load_manifest


def bench_image(width: int = 500, height: int = 375) -> bytes:
    """A real photograph (scikit-image's cat) as a JPEG of the benchmark's size."""
    import skimage.data

    img = Image.fromarray(skimage.data.chelsea()).resize((width, height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def offline(
    model_path: Path, size: int, threads: int, batch_sizes: list[int], seconds: float, provider: str
) -> dict:
    """The service's own runner called directly: images/s per batch size and batch-1 latency."""
    runner = OnnxRunner(model_path, [provider], threads)
    rng = np.random.default_rng(0)
    results: dict[int, float] = {}
    for bs in batch_sizes:
        x = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
        runner.run(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            runner.run(x)
            n += bs
        results[bs] = n / (time.perf_counter() - t0)
    x1 = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    lat = []
    for _ in range(30):
        t0 = time.perf_counter()
        runner.run(x1)
        lat.append(time.perf_counter() - t0)
    return {"by_batch": results, "batch1_p50_ms": statistics.median(lat) * 1e3}


def offline_lanes(
    model_path: Path, size: int, lanes: int, threads: int, batch: int, seconds: float, provider: str
) -> float:
    """One runner of `threads` threads called from `lanes` threads at once (the service's layout under
    load, as its batcher calls a model's lane runner): images/s at `batch`."""
    runner = OnnxRunner(model_path, [provider], threads)
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    runner.run(x)
    counts = [0] * lanes
    start = time.perf_counter()

    def lane(i: int) -> None:
        while time.perf_counter() - start < seconds:
            runner.run(x)
            counts[i] += batch

    workers = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def hey(
    url: str,
    body: Path,
    concurrency: int,
    seconds: float,
    qps: float | None = None,
    content_type: str = "application/json",
    headers: tuple[str, ...] = (),
) -> dict:
    """Runs hey and summarises its per-request CSV (only 200s count as served)."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", content_type]
    for header in headers:
        cmd += ["-H", header]
    if qps:
        cmd += ["-q", str(qps)]
    cmd += ["-D", str(body), "-o", "csv", "-t", "60", url]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(io.StringIO(out)))
    ok = [float(r["response-time"]) for r in rows if r["status-code"] == "200"]
    # Throughput over the span in which requests were answered, not hey's start-up.
    end = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=wall)
    return {
        "requests": len(rows),
        "ok": len(ok),
        "images_per_s": len(ok) / end if end else 0.0,
        "p50_ms": float(np.percentile(ok, 50) * 1e3) if ok else float("nan"),
        "p99_ms": float(np.percentile(ok, 99) * 1e3) if ok else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--seconds", type=float, default=20.0, help="load duration per concurrency level")
    p.add_argument("--offline-seconds", type=float, default=10.0)
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, both sides")
    p.add_argument(
        "--lanes",
        type=int,
        help="inference lanes, both sides (default: the service's own choice, 2 on a 2-core CPU, else 1)",
    )
    p.add_argument("--lane-batch", type=int, default=4, help="batch size of the offline lanes run")
    p.add_argument(
        "--provider", default="CPUExecutionProvider", help="provider, both sides (CUDA: add --lanes 1)"
    )
    p.add_argument(
        "--recheck-seconds",
        type=float,
        default=4.0,
        help="offline re-measured for this long (each layout) right before each service row; 0: no",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra service setting")
    args = p.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("bench needs `hey` (Debian: apt-get install hey)")

    if args.lanes is None:  # the service's own choice for this thread count and provider
        plan = ThreadPlan.resolve(Settings(providers=[args.provider], intra_op_threads=args.threads))
        args.lanes = plan.lanes
    model_dir = args.model_dir / args.model
    manifest = load_manifest(model_dir / "manifest.json")
    size = manifest.input_size
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    graph = model_dir / "model.onnx"
    off = offline(graph, size, args.threads, batch_sizes, args.offline_seconds, args.provider)
    best = max(off["by_batch"].values())
    best_bs = max(off["by_batch"], key=lambda b: off["by_batch"][b])
    lanes_ips = None
    per_lane = max(1, args.threads // args.lanes)  # intra-op threads of each lane, as the service splits them
    if args.lanes > 1:
        lanes_ips = offline_lanes(
            model_dir / "model.onnx",
            size,
            args.lanes,
            per_lane,
            args.lane_batch,
            args.offline_seconds,
            args.provider,
        )
        off["lanes"] = {
            "lanes": args.lanes,
            "threads": per_lane,
            "batch": args.lane_batch,
            "images_per_s": lanes_ips,
        }
    # The bar is the best the graph did by itself, in either layout.
    best = max(best, lanes_ips or 0.0)

    tmp = Path(tempfile.mkdtemp(prefix="simpool-bench-"))
    body = tmp / "body.json"
    body.write_text(json.dumps({"images": [base64.b64encode(bench_image()).decode()], "model": args.model}))
    env = {
        "SIMPOOL_PROVIDERS": args.provider,
        "SIMPOOL_INTRA_OP_THREADS": str(args.threads),
        "SIMPOOL_INFERENCE_LANES": str(args.lanes),
        "SIMPOOL_MAX_QUEUE": "1024",
        **dict(kv.split("=", 1) for kv in args.env),
    }

    def offline_now() -> float:
        """The bar again, just before a service row: this machine's speed drifts by several % over
        minutes (shared virtual CPUs), and the ratio should compare like with like."""
        if not args.recheck_seconds:
            return best
        secs = args.recheck_seconds
        bar = offline(graph, size, args.threads, [best_bs], secs, args.provider)["by_batch"][best_bs]
        if args.lanes > 1:
            lane_bar = offline_lanes(graph, size, args.lanes, per_lane, args.lane_batch, secs, args.provider)
            bar = max(bar, lane_bar)
        return bar

    rows = []
    with serve(args.model_dir, env, tmp / "serve.log") as server:
        url = server.url
        hey(f"{url}/embed", body, 4, 3.0)  # warm the HTTP path and JIT-free caches
        for c in [int(c) for c in args.concurrency.split(",")]:
            bar = offline_now()
            r = hey(f"{url}/embed", body, c, args.seconds)
            rows.append({"concurrency": c, **r, "offline": bar, "ratio": r["images_per_s"] / bar})
        lone = hey(f"{url}/embed", body, 1, min(args.seconds, 10.0), qps=4)

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"onnxruntime {ort.__version__}; model {args.model} ({manifest.arch}, {size}px); "
        f"intra-op threads {args.threads}\n"
    )
    print("offline (onnxruntime direct, preprocessed uint8 batches):")
    print("| batch | images/s |\n|---:|---:|")
    for bs, ips in off["by_batch"].items():
        print(f"| {bs} | {ips:.1f}{' (best)' if ips == best else ''} |")
    if lanes_ips is not None:
        lane = off["lanes"]
        print(
            f"\n{lane['lanes']} lanes at once ({lane['threads']} thread(s) each, batch {lane['batch']}): "
            f"{lanes_ips:.1f} images/s{' (best)' if lanes_ips == best else ''}"
        )
    print(f"\noffline bar (best of the above): {best:.1f} images/s")
    print(f"\ngraph batch-1 latency p50: {off['batch1_p50_ms']:.1f} ms\n")
    print("service (POST /embed, one 500x375 JPEG per request, JSON base64):")
    print("(offline: the bar re-measured just before each row; the ratio is against it)")
    print("| clients | requests | ok | images/s | p50 ms | p99 ms | offline | service / offline |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['images_per_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['offline']:.1f} | {r['ratio']:.2f} |"
        )
    overhead = lone["p50_ms"] - off["batch1_p50_ms"]
    print(
        f"\nidle lone request (1 client, 4 req/s): p50 {lone['p50_ms']:.1f} ms, "
        f"p99 {lone['p99_ms']:.1f} ms; {overhead:+.1f} ms over the graph's batch-1 time"
    )
    if args.json:
        args.json.write_text(json.dumps({"offline": off, "service": rows, "lone": lone}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
