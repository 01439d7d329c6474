"""Embedding query images with the model of an index: a running simpool-serve, or in-process."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from simpool_serve.client import SimPoolClient
from simpool_serve.client.backends import LocalBackend, Outcome, default_url
from simpool_serve.client.descriptor_args import add_descriptor_arguments, descriptor_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="simpool-serve (default: $SIMPOOL_URL or http://127.0.0.1:8000)")
    where.add_argument("--local", type=Path, metavar="MODEL_DIR", help="embed in-process")
    p.add_argument("--api-key", default=None)
    # The index's descriptor: the whole photograph (index_folder.sh embeds with --view full too); a
    # query made with other flags has another fingerprint, and the index refuses it.
    add_descriptor_arguments(p, view="full")


async def _embed_local(
    images: list[Path], model_dir: Path, model: str, descriptor: dict[str, Any]
) -> tuple[list[Outcome], str]:
    backend = await LocalBackend.open(model_dir, model=model, descriptor=descriptor)
    try:
        return await backend.embed([p.read_bytes() for p in images]), backend.fingerprint
    finally:
        await backend.aclose()


def embed_queries(images: list[Path], args: argparse.Namespace, model: str) -> tuple[np.ndarray, str]:
    """L2-normalised query vectors [Q, D] and the fingerprint of the model that made them."""
    if args.local is not None:
        outcomes, fingerprint = asyncio.run(_embed_local(images, args.local, model, descriptor_of(args)))
        bad = [f"{p}: {o.error}" for p, o in zip(images, outcomes, strict=True) if o.error]
        if bad:
            raise SystemExit("cannot embed " + "; ".join(bad))
        return np.stack([o.embedding for o in outcomes]), fingerprint
    with SimPoolClient(args.url or default_url(), api_key=args.api_key) as client:
        result = client.embed(images, model=model, **descriptor_of(args))
    return result.embeddings, result.fingerprint
