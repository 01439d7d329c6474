"""The `--engine ray` options of `simpool-embed`, kept apart so the single-process CLI stays as it is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "simpool-embed"


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (--engine ray: the same job on a Ray cluster; needs the `ray` extra)")
    g.add_argument(
        "--engine",
        choices=("asyncio", "ray"),
        default="asyncio",
        help="asyncio: this process (default); ray: Ray Data, OUT is a folder of Parquet shards",
    )
    g.add_argument("--ray-address", metavar="ADDR", help="a running cluster (default: start a local Ray)")
    g.add_argument("--workers", type=int, metavar="N", help="embedding actors (default: one per core / GPU)")
    g.add_argument(
        "--shard-rows", type=int, default=1024, metavar="N", help="rows per output shard at most (1024)"
    )


def check_ray_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.local is None:
        p.error("--engine ray runs the model inside the job's workers: give --local MODEL_DIR (not --url)")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    if args.shard_rows < 1:
        p.error("--shard-rows must be >= 1")
    return args


def reject_ray_only(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ray_address or args.workers is not None:
        p.error("--ray-address and --workers need --engine ray")


def run_ray(args: argparse.Namespace) -> int:
    """Runs the Ray job; a problem that stops it is exit 2 with one line, as in the other engine."""
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(
            f"{PROG}: error: --engine ray needs Ray Data: pip install 'simpool-serve[ray]' ({exc})",
            file=sys.stderr,
        )
        return 2
    from simpool_serve.client.backends import FatalError
    from simpool_serve.client.ray_job import run

    try:
        return run(args)
    except FatalError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; every shard reported written is in {Path(args.out)}", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
