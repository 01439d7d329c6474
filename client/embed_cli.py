"""`simpool-embed`: embed every image under a folder into a resumable Parquet file.

Its Parquet files and progress bar need pyarrow and tqdm, which the `embed` extra brings; the service
and its image do without them (pyarrow alone is about 170 MB). This entry point says so in one line,
instead of a traceback, before it loads the command itself (embed_run.py).
"""

from __future__ import annotations

import importlib.util
import sys

PROG = "simpool-embed"
NEEDS = ("pyarrow", "tqdm")  # the `embed` extra of pyproject.toml


def missing_modules(names: tuple[str, ...] = NEEDS) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    missing = missing_modules()
    if missing:
        print(
            f"{PROG}: error: {' and '.join(missing)} missing: simpool-embed needs the `embed` extra: "
            "pip install 'simpool-serve[embed]' (in a clone: make install)",
            file=sys.stderr,
        )
        return 2
    from simpool_serve.client.embed_run import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
