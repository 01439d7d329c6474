"""`simpool-eval-retrieval`: mAP on revisited Oxford or Paris, through a service or in-process.

Database and query images are described with the descriptor flags (`--view full --scales 1 0.7071
0.5` is the paper's protocol), ranked by inner product, and scored as the benchmark's `compute_map`
scores them (client/retrieval_eval.py). The run ends with one line, `mAP easy=E medium=M hard=H`.
The data set is the user's own download, in its authors' layout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from simpool_serve.client.descriptor_args import add_descriptor_arguments, descriptor_of
from simpool_serve.client.retrieval_eval import DatasetError, evaluate, load_dataset, map_line, rank

_IN_FLIGHT = 16  # images in the local engine at once: enough to fill its batches, far below its queue


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="simpool-eval-retrieval", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="ROOT holding DATASET/gnd_DATASET.pkl and jpg/")
    p.add_argument("--dataset", choices=["roxford5k", "rparis6k"], required=True)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running simpool-serve (default http://127.0.0.1:8000)")
    where.add_argument("--local", type=Path, help="a model folder (or repository) run in this process")
    p.add_argument("--model", help="the model (default: the service's default, or the only one)")
    p.add_argument(
        "--query-box",
        choices=["none", "crop"],
        default="none",
        help="none: whole query images (DINO's and the paper's protocol); crop: cut to their box",
    )
    add_descriptor_arguments(p, view="full")
    p.add_argument("--api-key", help="the service's key (default: SIMPOOL_API_KEY)")
    return p.parse_args(argv)


def _fields(args: argparse.Namespace, region: Sequence[float] | None = None) -> dict[str, Any]:
    fields = descriptor_of(args)
    if region is not None:
        fields["region"] = list(region)
    return fields


def _upright_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).size


async def _local_vectors(
    folder: Path, model: str | None, jobs: list[tuple[Path, dict[str, Any]]]
) -> np.ndarray:
    """The descriptors of `jobs` (a file and its fields) with the service's engine in this process."""
    from simpool_serve.client.backends import resolve_model_dir
    from simpool_serve.service.engine import Call, Engine, EngineConfig, ModelFolder
    from simpool_serve.service.engine.descriptor import Descriptor
    from simpool_serve.service.metrics import Metrics
    from simpool_serve.spec import EMBEDDING

    chosen = ModelFolder.read(resolve_model_dir(folder, model))
    config = EngineConfig()
    engine = Engine(config, Metrics(config.max_batch_size or 32), {chosen.name: chosen}, chosen.name)
    await engine.load()
    try:
        served = engine.model(None)
        slots = asyncio.Semaphore(_IN_FLIGHT)

        async def one(path: Path, fields: dict[str, Any]) -> np.ndarray:
            call = Call(images=[path.read_bytes()], descriptor=Descriptor.from_parameters(fields))
            async with slots:
                answer = await engine.run(served, call, deadline=engine.deadline())
            return np.asarray(answer.outputs[0][EMBEDDING], np.float64)  # type: ignore[index]

        vectors = await asyncio.gather(*(one(p, f) for p, f in jobs))
    finally:
        await engine.close()
    return np.stack(vectors)


def _remote_vectors(
    url: str, model: str | None, key: str | None, jobs: list[tuple[Path, dict[str, Any]]]
) -> np.ndarray:
    """The same through a running service, grouped by fields so that equal requests share calls."""
    from simpool_serve.client import SimPoolClient

    out: list[np.ndarray | None] = [None] * len(jobs)
    groups: dict[str, list[int]] = {}
    for i, (_, fields) in enumerate(jobs):
        groups.setdefault(repr(sorted(fields.items())), []).append(i)
    with SimPoolClient(url, api_key=key) as client:
        for indices in groups.values():
            fields = jobs[indices[0]][1]
            result = client.embed([jobs[i][0] for i in indices], model=model, **fields)
            for i, row in zip(indices, result.embeddings, strict=True):
                out[i] = np.asarray(row, np.float64)
    return np.stack(out)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = load_dataset(args.data, args.dataset)
    except DatasetError as exc:
        print(f"simpool-eval-retrieval: error: {exc}", file=sys.stderr)
        return 2
    base = _fields(args)
    database = [(p, base) for p in data.image_paths]
    queries = [
        (p, _fields(args, data.query_box(i, _upright_size(p))) if args.query_box == "crop" else base)
        for i, p in enumerate(data.query_paths)
    ]
    jobs = database + queries
    if args.local is not None:
        vectors = asyncio.run(_local_vectors(args.local, args.model, jobs))
    else:
        url = args.url or os.environ.get("SIMPOOL_URL", "http://127.0.0.1:8000")
        vectors = _remote_vectors(url, args.model, args.api_key or os.environ.get("SIMPOOL_API_KEY"), jobs)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    db, q = vectors[: len(database)], vectors[len(database) :]
    print(f"{args.dataset}: {len(database)} images, {len(queries)} queries, query box: {args.query_box}")
    print(map_line(evaluate(rank(db, q), data.gnd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
