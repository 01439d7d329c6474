"""Model-only GPU throughput through the service's own runner and provider options, batch 1..256.

Variants (each an `OnnxRunner` built with the options `simpool-serve` would use):
  cuda-fp32        the fp32 graph on the CUDA provider
  cuda-fp32-bind   the same through I/O binding (SIMPOOL_IO_BINDING=true)
  cuda-fp16        the `--fp16` graph on the CUDA provider
  trt-fp16         the fp32 graph on the TensorRT provider, FP16 allowed, one profile for 1..256,
                   engine cache in the model folder (the first run builds it; its time is printed)

Input is random uint8 pixels already on the host, as the service hands batches over; the time
includes the host-to-device copy of the input and the copy of the outputs back.

    python bench/gpu.py --fp32 model_repository/resnet50_simpool --fp16 model_repository/resnet50_fp16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from simpool_serve.service.engine.providers import CPU, CUDA, TENSORRT, ProviderOptions
from simpool_serve.service.engine.runner import OnnxRunner, ProviderError
from simpool_serve.spec import load_manifest

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def sweep(runner: OnnxRunner, size: int, batches: tuple[int, ...], seconds: float) -> dict[int, float]:
    rng = np.random.default_rng(0)
    out: dict[int, float] = {}
    for bs in batches:
        x = rng.integers(0, 256, (bs, size, size, 3), dtype=np.uint8)
        for _ in range(3):
            runner.run(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            runner.run(x)
            n += bs
        out[bs] = n / (time.perf_counter() - t0)
        print(f"  batch {bs}: {out[bs]:.0f} images/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, required=True, help="folder of the fp32 export")
    p.add_argument("--fp16", type=Path, help="folder of the --fp16 export of the same model")
    p.add_argument("--seconds", type=float, default=1.5, help="per batch size and variant")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--skip", default="", help="comma-separated variants to leave out")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    size = load_manifest(args.fp32 / "manifest.json").input_size
    batches = tuple(b for b in BATCHES if b <= args.max_batch)
    base = ProviderOptions(input_size=size, max_batch=args.max_batch)
    variants = {
        "cuda-fp32": (args.fp32, [CUDA, CPU], base),
        "cuda-fp32-bind": (args.fp32, [CUDA, CPU], dataclasses.replace(base, io_binding=True)),
        "cuda-fp16": (args.fp16, [CUDA, CPU], base),
        "trt-fp16": (args.fp32, [TENSORRT, CUDA, CPU], base),
    }
    results: dict[str, dict[int, float]] = {}
    for name, (folder, providers, options) in variants.items():
        if folder is None or name in args.skip.split(","):
            continue
        t0 = time.perf_counter()
        try:
            runner = OnnxRunner(folder / "model.onnx", providers, 1, options=options)
        except ProviderError as exc:
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        if runner.provider != providers[0]:
            print(f"{name}: {providers[0]} did not start (got {runner.provider}); skipped", flush=True)
            continue
        runner.run(np.zeros((1, size, size, 3), np.uint8))
        print(f"{name}: session ready in {time.perf_counter() - t0:.1f}s", flush=True)
        results[name] = sweep(runner, size, batches, args.seconds)
        del runner

    names = list(results)
    print("\n| batch | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for bs in batches:
        print(f"| {bs} | " + " | ".join(f"{results[n][bs]:.0f}" for n in names) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
