"""What each retrieval descriptor costs, through the engine in one process, side by side in rounds.

Photographs of mixed aspect ratio (4:3, 3:4, 16:9, 1:1; 1024 px on the longer side, JPEG) go through
the service's own engine (decode, batcher, graph) with 32 requests of one image in flight, for each
descriptor in turn: `crop`, `full` at 224, `full` at 224 with the paper's three scales, `full` at 512.
A last row runs `full` at 224 on photographs of one aspect ratio only (4:3), so that its difference
from the mixed row is what batching by shape costs. Each row gives images/s and the process's CPU ms
per image; the table gives medians over rounds, each ratio taken against the `crop` row of its round.

    python bench/views.py --model-dir model_repository --model resnet50_simpool --rounds 3 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from pathlib import Path

from PIL import Image

from simpool_serve.service.engine import Call, Engine, EngineConfig
from simpool_serve.service.engine.descriptor import Descriptor
from simpool_serve.service.metrics import Metrics

ROWS: dict[str, tuple[Descriptor, str]] = {
    "crop": (Descriptor(), "mixed"),
    "full 224": (Descriptor(view="full", size=224), "mixed"),
    "full 224 x3 scales": (Descriptor(view="full", size=224, scales=(1.0, 0.7071, 0.5)), "mixed"),
    "full 512": (Descriptor(view="full", size=512), "mixed"),
    "full 224, one shape": (Descriptor(view="full", size=224), "4:3"),
}
SHAPES = {"4:3": (1024, 768), "3:4": (768, 1024), "16:9": (1024, 576), "1:1": (1024, 1024)}


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


async def measure(
    engine: Engine, descriptor: Descriptor, files: list[bytes], clients: int, seconds: float
) -> tuple[float, float]:
    """Images/s and CPU ms per image with `clients` one-image requests in flight for `seconds`."""
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
    stop = time.perf_counter() + seconds
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return done / wall, cpu * 1e3 / max(done, 1)


async def main_async(args: argparse.Namespace) -> None:
    config = EngineConfig(model_dir=args.model_dir, default_model=args.model, max_queue=1024)
    engine = Engine.from_config(config, Metrics(config.max_batch_size or 32))
    await engine.load()
    files = {mix: photographs(mix) for mix in ("mixed", "4:3")}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ROWS}
    try:
        for _ in range(args.rounds):
            base = None
            for name, (descriptor, mix) in ROWS.items():
                ips, cpu_ms = await measure(engine, descriptor, files[mix], args.clients, args.seconds)
                base = ips if base is None else base
                results[name].append((ips, cpu_ms, ips / base))
    finally:
        await engine.close()
    print(
        f"model {args.model}, {args.clients} one-image requests in flight, "
        f"{args.rounds} rounds x {args.seconds:g} s"
    )
    print("| descriptor | images/s | CPU ms / image | vs crop (same round) |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        ips = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        ratio = statistics.median(r[2] for r in rows)
        print(f"| {name} | {ips:.1f} | {cpu:.1f} | {ratio:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="resnet50_simpool")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
