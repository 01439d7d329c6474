"""`simpool-whiten MODEL_DIR/NAME --images DIR`: fit the paper's PCA whitening for a model's descriptors.

The descriptors are the engine's own (`view`, `size`, `scales` as a request would ask for them, before
any whitening), computed in this process from the images under DIR; the fitted whitening goes into the
model's folder (`whitening.npz` + `whitening.json`, each written atomically), where the service reads
it with the model and serves it with `whiten` / `dimensions`. Exit codes: 0 fitted, 1 every image
failed or the folder is not a model, 2 a usage error (too few images for the components asked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

USAGE = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="simpool-whiten",
        description="Fit PCA whitening (the paper's retrieval protocol) on a model's descriptors of DIR's "
        "images, and store it in the model's folder.",
    )
    p.add_argument("model", type=Path, help="the model's folder (MODEL_DIR/NAME)")
    p.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    p.add_argument("--view", choices=["crop", "full"], default="full", help="the view (default: full)")
    p.add_argument("--size", type=int, help="longer side of the full view (default: the model's input_size)")
    p.add_argument("--scales", type=float, nargs="+", help="scales averaged per descriptor (default: 1)")
    p.add_argument("--dims", type=int, default=256, help="components kept (default 256)")
    p.add_argument("--power", type=float, default=0.5, help="eigenvalue power (default 0.5)")
    return p.parse_args(argv)


async def _descriptors(folder: Path, files: list[Path], descriptor: object) -> tuple[np.ndarray, list[str]]:
    """The L2-normalised descriptors of `files` (the ones that decode), with the errors of the rest."""
    from simpool_serve.service.engine import Call, Engine, EngineConfig, EngineError, ModelFolder
    from simpool_serve.service.metrics import Metrics
    from simpool_serve.spec import EMBEDDING

    model_folder = ModelFolder.read(folder)
    config = EngineConfig()
    engine = Engine(
        config, Metrics(config.max_batch_size or 32), {model_folder.name: model_folder}, model_folder.name
    )
    await engine.load()
    vectors: list[np.ndarray] = []
    errors: list[str] = []
    try:
        model = engine.model(None)
        step = engine.limits.max_images
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            call = Call(images=[f.read_bytes() for f in chunk], on_error="skip", descriptor=descriptor)  # type: ignore[arg-type]
            try:
                answer = await engine.run(model, call, deadline=engine.deadline())
            except EngineError as exc:
                raise SystemExit(f"simpool-whiten: error: {exc.detail}") from exc
            errors += [f"{chunk[f.index]}: {f.detail}" for f in answer.failures]
            for out in answer.outputs:
                if out is not None:
                    v = np.asarray(out[EMBEDDING], np.float64)
                    vectors.append(v / max(float(np.linalg.norm(v)), 1e-12))
    finally:
        await engine.close()
    return (np.stack(vectors) if vectors else np.zeros((0, 0))), errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simpool_serve.client.walk import find_images
    from simpool_serve.service.engine.descriptor import Descriptor
    from simpool_serve.service.engine.whitening import TooFewImages, WhiteningError, fit, save

    if not (args.model / "manifest.json").is_file():
        print(
            f"simpool-whiten: error: {args.model} is not a model folder (no manifest.json)", file=sys.stderr
        )
        return 1
    if not args.images.is_dir():
        print(f"simpool-whiten: error: {args.images} is not a folder", file=sys.stderr)
        return USAGE
    files = [args.images / rel for rel in find_images(args.images)]
    if len(files) <= args.dims:
        print(
            f"simpool-whiten: error: {args.dims} components need at least {args.dims + 1} images; "
            f"{args.images} holds {len(files)} (add images or lower --dims)",
            file=sys.stderr,
        )
        return USAGE
    scales = tuple(args.scales) if args.scales else None
    descriptor = Descriptor(view=args.view, size=args.size, scales=scales)
    vectors, errors = asyncio.run(_descriptors(args.model, files, descriptor))
    for error in errors:
        print(f"skipped {error}", file=sys.stderr)
    try:
        whitening = fit(vectors, dims=args.dims, power=args.power)
    except TooFewImages as exc:
        print(f"simpool-whiten: error: {exc}", file=sys.stderr)
        return USAGE
    except WhiteningError as exc:
        print(f"simpool-whiten: error: {exc}", file=sys.stderr)
        return 1
    manifest = json.loads((args.model / "manifest.json").read_text())
    size = args.size or int(manifest["input_size"])
    settings = save(
        whitening, args.model, view=args.view, size=size, scales=list(scales or (1.0,)),
        count=len(vectors), power=args.power,
    )  # fmt: skip
    print(
        f"whitening of {args.model.name}: {whitening.dims} components from {len(vectors)} images "
        f"(view={args.view}, size={size}, scales={settings['scales']}); written to "
        f"{args.model / 'whitening.npz'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
