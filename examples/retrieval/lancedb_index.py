"""Load simpool-embed output (a Parquet file or a shard folder) into a LanceDB table.

    python lancedb_index.py EMBEDDINGS --db DB_URI [--table images] [--index auto|yes|no]

DB_URI is a folder (embedded LanceDB, no server), or s3://bucket/path, gs://... for a table on object
storage, or db://NAME for LanceDB Cloud. The model and fingerprint are stored in the table's metadata.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simpool_serve.client import vectordb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("embeddings", type=Path, help="output of simpool-embed (file, or --engine ray folder)")
    p.add_argument("--db", required=True, help="LanceDB URI: a folder, s3://..., gs://..., db://...")
    p.add_argument("--table", default=vectordb.TABLE)
    p.add_argument(
        "--index",
        choices=("auto", "yes", "no"),
        default="auto",
        help=f"ANN index (IVF-PQ): auto = from {vectordb.MIN_ROWS_FOR_INDEX} rows; below, exact search",
    )
    args = p.parse_args(argv)

    rows, model, fingerprint = vectordb.load_vectors(args.embeddings)
    start = time.perf_counter()
    index = {"auto": None, "yes": True, "no": False}[args.index]
    tbl = vectordb.build(args.db, rows, model, fingerprint, table=args.table, index=index)
    print(
        f"indexed {tbl.count_rows()} images into {args.db}/{args.table} ({model}, fingerprint"
        f" {fingerprint}) in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
