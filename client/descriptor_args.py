"""The retrieval descriptor's command-line flags, shared by simpool-embed, simpool-eval-retrieval and
the Ray engine: `--view full --scales 1 0.7071 0.5 --whiten` asks for the paper's descriptor."""

from __future__ import annotations

import argparse
from typing import Any

from simpool_serve.client.protocol import descriptor_fields


def add_descriptor_arguments(p: argparse.ArgumentParser, view: str | None = None) -> None:
    """`view`: the default view (None: the service's, `crop`)."""
    g = p.add_argument_group("retrieval descriptor (docs/retrieval.md)")
    g.add_argument(
        "--view", choices=["crop", "full"], default=view, help=f"the view (default: {view or 'crop'})"
    )
    g.add_argument("--size", type=int, help="longer side of a full view (default: the model's input_size)")
    g.add_argument("--scales", type=float, nargs="+", metavar="S", help="scales averaged into one descriptor")
    g.add_argument(
        "--whiten", action="store_true", help="apply the model's fitted whitening (simpool-whiten)"
    )
    g.add_argument("--dims", type=int, help="whitened components kept (implies --whiten)")
    g.add_argument(
        "--region",
        choices=["attention"],
        help="attention: describe each image cut to the box of its own SimPool attention (full view)",
    )


def descriptor_of(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the flags set, as every door and the engine take them."""
    return descriptor_fields(
        args.view, args.size, args.scales, args.region, True if args.whiten else None, args.dims
    )
