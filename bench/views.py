"""What each retrieval descriptor costs, offline (the engine in this process) and through the service.

Photographs of mixed aspect ratio (4:3, 3:4, 16:9, 1:1; 1024 px on the longer side, JPEG) go, with 32
one-image requests in flight, for each descriptor in turn (`crop`, `full` at 224, `full` at 224 with
the paper's three scales, `full` at 512):
  offline: through the service's own engine in this process (decode, batcher, graph; no HTTP);
  service: to a real `simpool-serve` on loopback, as REST JSON, from 32 clients (Debian's `hey`, one
           process per photograph, two clients each, so that the mix arrives interleaved).
The last rows run `full` at 224 on the photographs of each aspect ratio alone: the mix would run at the
harmonic mean of their rates (each shape's images take their own time) if batching by shape cost
nothing, so the mixed row's ratio to that mean is what it costs (the shapes differ in pixels: a 1:1
view has 4/3 of a 4:3 one's, and its JPEG is larger). Each row gives images/s, the CPU ms per image (this
process's, or the server's from /proc) and the mean batch size; rounds alternate the rows and the
modes, and the table gives medians over rounds with their range, each ratio against the `crop` row of
its round and mode.

    python bench/views.py --model-dir model_repository --model resnet50_simpool --rounds 3 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from launch import Served, serve
from PIL import Image
from prometheus_client import generate_latest

from simpool_serve.service.engine import Call, Engine, EngineConfig
from simpool_serve.service.engine.descriptor import Descriptor
from simpool_serve.service.metrics import Metrics

ROWS: dict[str, tuple[Descriptor, str]] = {
    "crop": (Descriptor(), "mixed"),
    "full 224": (Descriptor(view="full", size=224), "mixed"),
    "full 224 x3 scales": (Descriptor(view="full", size=224, scales=(1.0, 0.7071, 0.5)), "mixed"),
    "full 512": (Descriptor(view="full", size=512), "mixed"),
    **{
        f"full 224, {shape} only": (Descriptor(view="full", size=224), shape)
        for shape in ("4:3", "3:4", "16:9", "1:1")
    },
}
SHAPES = {"4:3": (1024, 768), "3:4": (768, 1024), "16:9": (1024, 576), "1:1": (1024, 1024)}
ONE_SHAPE = [name for name in ROWS if name.endswith(" only")]


def photographs(mix: str) -> list[bytes]:
    """scikit-image photographs as JPEGs of the mixed ratios, or of one ratio only."""
    import skimage.data as data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    shapes = list(SHAPES.values()) if mix == "mixed" else [SHAPES[mix]]
    out = []
    for source in sources:
        for size in shapes if mix == "mixed" else shapes * 4:
            buf = io.BytesIO()
            Image.fromarray(source).convert("RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def batch_totals(text: str) -> tuple[float, float]:
    """Images and batches so far, from the `simpool_batch_size` histogram of a /metrics text."""
    total = count = 0.0
    for line in text.splitlines():
        if m := re.match(r"simpool_batch_size_(sum|count)\{[^}]*\} ([0-9.e+]+)", line):
            total, count = (float(m[2]), count) if m[1] == "sum" else (total, float(m[2]))
    return total, count


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    batches = after[1] - before[1]
    return (after[0] - before[0]) / batches if batches else float("nan")


async def measure(
    engine: Engine, metrics: Metrics, descriptor: Descriptor, files: list[bytes], clients: int, seconds: float
) -> tuple[float, float, float]:
    """Images/s, CPU ms per image and the mean batch with `clients` one-image requests in flight."""
    model = engine.model(None)
    done = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            call = Call(images=[files[i % len(files)]], descriptor=descriptor)
            await engine.run(model, call, deadline=engine.deadline())
            done += 1
            i += clients

    for data in files[:4]:  # warm: each shape once (a new shape may allocate)
        await engine.run(model, Call(images=[data], descriptor=descriptor), deadline=engine.deadline())
    scrape = lambda: batch_totals(generate_latest(metrics.registry).decode())  # noqa: E731
    stop = time.perf_counter() + seconds
    batches, cpu, wall = scrape(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return done / wall, cpu * 1e3 / max(done, 1), mean_batch(batches, scrape())


def process_cpu(pid: int) -> float:
    """CPU seconds of a process so far, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bodies(model: str, descriptor: Descriptor, files: list[bytes], tmp: Path) -> list[Path]:
    """One REST JSON request per photograph, with the descriptor's fields, as files for `hey`."""
    fields = descriptor.model_dump(exclude_none=True, exclude_defaults=True)
    out = []
    for i, data in enumerate(files):
        path = tmp / f"body-{i}.json"
        path.write_text(json.dumps({"model": model, "images": [base64.b64encode(data).decode()], **fields}))
        out.append(path)
    return out


def hey_all(url: str, paths: list[Path], clients: int, seconds: float) -> tuple[int, int, float]:
    """`clients` clients spread over one `hey` per body, all at once: (200s, other answers, span s)."""
    per, extra = divmod(clients, len(paths))
    procs = []
    for i, path in enumerate(paths):
        c = per + (i < extra)
        if not c:
            continue
        cmd = ["hey", "-z", f"{seconds}s", "-c", str(c), "-m", "POST", "-T", "application/json"]
        cmd += ["-D", str(path), "-o", "csv", "-t", "120", url + "/embed"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    ok = bad = 0
    end = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        for line in out.splitlines()[
            1:
        ]:  # response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
            cells = line.split(",")
            if len(cells) < 8:
                continue
            if cells[6] == "200":
                ok += 1
                end = max(end, float(cells[7]) + float(cells[0]))
            else:
                bad += 1
    return ok, bad, end


def measure_service(
    served: Served, model: str, descriptor: Descriptor, files: list[bytes], clients: int, seconds: float
) -> tuple[float, float, float]:
    """Images/s, the server's CPU ms per image and the mean batch, `clients` REST clients for `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = bodies(model, descriptor, files, Path(tmp))
        hey_all(served.url, paths[:4], 4, 1.0)  # warm: each shape once
        scrape = lambda: batch_totals(urllib.request.urlopen(served.url + "/metrics").read().decode())  # noqa: E731
        batches, cpu = scrape(), process_cpu(served.pid)
        ok, bad, span = hey_all(served.url, paths, clients, seconds)
        cpu = process_cpu(served.pid) - cpu
    if bad:
        raise SystemExit(f"{bad} requests not answered 200 (descriptor {descriptor})")
    return ok / span if span else 0.0, cpu * 1e3 / max(ok, 1), mean_batch(batches, scrape())


Figures = dict[tuple[str, str], list[tuple[float, float, float, float]]]


async def main_async(args: argparse.Namespace) -> None:
    modes = ["offline", "service"] if args.mode == "both" else [args.mode]
    config = EngineConfig(model_dir=args.model_dir, default_model=args.model, max_queue=1024)
    metrics = Metrics(config.max_batch_size or 32)
    engine = Engine.from_config(config, metrics)
    await engine.load()
    files = {mix: photographs(mix) for mix in ("mixed", *SHAPES)}
    results: Figures = {}
    env = {"SIMPOOL_MAX_QUEUE": "1024", **dict(kv.split("=", 1) for kv in args.env)}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        served = None
        if "service" in modes:
            served = stack.enter_context(serve(args.model_dir, env, Path(tmp) / "serve.log"))
        try:
            for r in range(args.rounds):
                for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                    base = None
                    for name, (descriptor, mix) in ROWS.items():
                        if mode == "offline":
                            got = await measure(
                                engine, metrics, descriptor, files[mix], args.clients, args.seconds
                            )
                        else:
                            assert served is not None
                            got = await asyncio.to_thread(
                                measure_service,
                                served,
                                args.model,
                                descriptor,
                                files[mix],
                                args.clients,
                                args.seconds,
                            )
                        base = got[0] if base is None else base
                        results.setdefault((mode, name), []).append((*got, got[0] / base))
                        print(mode, name, " ".join(f"{v:.2f}" for v in (*got, got[0] / base)), flush=True)
        finally:
            await engine.close()
    print_table(args, results)


def _cell(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def print_table(args: argparse.Namespace, results: Figures) -> None:
    print(
        f"\nmodel {args.model}, {args.clients} one-image requests in flight, "
        f"{args.rounds} rounds x {args.seconds:g} s; medians (range)"
    )
    print("| descriptor | mode | images/s | CPU ms / image | mean batch | vs crop (same round) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in ROWS:
        for mode in ("service", "offline"):
            rows = results.get((mode, name))
            if not rows:
                continue
            cells = [_cell([r[0] for r in rows]), _cell([r[1] for r in rows]), _cell([r[2] for r in rows])]
            print(f"| {name} | {mode} | {' | '.join(cells)} | {_cell([r[3] for r in rows], 2)} |")
    for mode in ("service", "offline"):
        mixed = results.get((mode, "full 224"))
        if not mixed:
            continue
        # Per round: the rate the mix would have if each shape ran as fast as it does alone.
        alone = [
            len(ONE_SHAPE) / sum(1 / results[mode, n][r][0] for n in ONE_SHAPE) for r in range(len(mixed))
        ]
        ratios = [m[0] / a for m, a in zip(mixed, alone, strict=True)]
        # The steadier measure on a shared machine: CPU per image, the mix against its shapes' mean.
        cpu = [m[1] / statistics.mean(results[mode, n][r][1] for n in ONE_SHAPE) for r, m in enumerate(mixed)]
        print(
            f"\n{mode}: full 224 on the mix / the harmonic mean of its shapes alone, per round: "
            + ", ".join(f"{v:.3f}" for v in ratios)
            + f" (median {statistics.median(ratios):.3f}; the shapes alone: {_cell(alone)} images/s); "
            + "CPU ms/image of the mix / the mean of its shapes alone: "
            + ", ".join(f"{v:.3f}" for v in cpu)
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--mode", choices=["both", "offline", "service"], default="both")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra service setting")
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
