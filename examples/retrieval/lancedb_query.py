"""Query a LanceDB table built by `lancedb_index.py` with one or more images.

    python lancedb_query.py DB_URI photo.jpg [more.jpg ...] [-k 5] [--url URL | --local MODEL_DIR] [--json]

The queries are embedded by the table's model; a query whose fingerprint differs from the one stored
with the table is refused (exit 3), since its scores would compare vectors of different spaces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from queries import add_arguments, embed_queries

from simpool_serve.client import vectordb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db", help="LanceDB URI given to lancedb_index.py")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--table", default=vectordb.TABLE)
    p.add_argument("-k", type=int, default=5, help="results per query (default 5)")
    add_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)

    index = vectordb.VectorIndex(args.db, args.table)
    queries, fingerprint = embed_queries(args.images, args, index.model)
    try:
        hits = index.search(queries, fingerprint, k=args.k)
    except vectordb.FingerprintMismatch as exc:
        print(str(exc), file=sys.stderr)
        return 3
    results = {
        str(q): [{"rank": r + 1, "path": h.path, "score": h.score} for r, h in enumerate(found)]
        for q, found in zip(args.images, hits, strict=True)
    }
    if args.json:
        print(json.dumps({"model": index.model, "fingerprint": fingerprint, "results": results}))
        return 0
    for query, found in results.items():
        print(f"{query}  ({index.model})")
        for hit in found:
            print(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
