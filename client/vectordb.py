"""simpool-embed output in LanceDB: vectors, paths and the fingerprint they were made with, together.

LanceDB runs in-process on a folder (no server), stores Arrow/Parquet-like columnar files, and the same
table can live on object storage (s3://, gs://) or in LanceDB Cloud/Enterprise when one machine is
not enough. The fingerprint goes into the table's schema metadata, so it travels with the vectors and
every search checks it: vectors of another model's space are never compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simpool_serve.client import store

TABLE = "images"
META_MODEL, META_FINGERPRINT = b"simpool.model", b"simpool.fingerprint"
# Below this many rows an exact scan is fast (a few ms) and an IVF index would have too few rows per
# partition to train on: the table is searched exactly.
MIN_ROWS_FOR_INDEX = 5_000


class FingerprintMismatch(Exception):
    """A query embedded by another model (or preprocessing) than the table's vectors."""


@dataclass(frozen=True)
class IndexParams:
    """IVF with 8-bit scalar-quantised vectors and a refine step on the full vectors; chosen in
    bench/vector_db.py for recall@10 >= 0.95 on 100k vectors with a build of seconds (IVF-PQ's
    codebook training took minutes there)."""

    kind: str = "IVF_SQ"  # or IVF_FLAT, IVF_PQ
    partitions_per_sqrt_rows: float = 1.0  # num_partitions = sqrt(rows) (316 at 100k)
    sub_vector_dim: int = 8  # IVF_PQ only: num_sub_vectors = dim / 8
    nprobes: int = 20
    refine_factor: int = 5


def load_vectors(path: Path) -> tuple[pa.Table, str, str]:
    """The embedded rows of a simpool-embed output (file or shard folder), its model and fingerprint.

    Failed rows are left out; rows of more than one fingerprint are refused (a half re-embedded folder).
    """
    table, warnings = store.read_output(path)
    if warnings:
        raise SystemExit("; ".join(warnings))
    table = table.filter(pc.is_null(table.column("error")))
    fingerprints = set(table.column("fingerprint").unique().to_pylist())
    if len(fingerprints) > 1:
        raise SystemExit(
            f"{path} mixes fingerprints {sorted(fingerprints)}: run simpool-embed again so every row"
            " comes from the current model"
        )
    if table.num_rows == 0:
        raise SystemExit(f"{path} has no embeddings")
    return table, table.column("model")[0].as_py(), fingerprints.pop()


def _fixed_vectors(embedding: pa.ChunkedArray | pa.Array) -> pa.FixedSizeListArray:
    column = embedding.combine_chunks() if isinstance(embedding, pa.ChunkedArray) else embedding
    dim = len(column[0])
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)


def build(
    db_uri: str,
    rows: pa.Table,
    model: str,
    fingerprint: str,
    *,
    table: str = TABLE,
    params: IndexParams | None = None,
    index: bool | None = None,
) -> Any:
    """(Re)creates `table` from simpool-embed rows; an ANN index when the table is large enough."""
    import lancedb

    vectors = _fixed_vectors(rows.column("embedding"))
    dim = vectors.type.list_size
    data = pa.table(
        {"path": rows.column("path"), "sha256": rows.column("sha256"), "vector": vectors},
    ).replace_schema_metadata({META_MODEL: model, META_FINGERPRINT: fingerprint})
    db = lancedb.connect(db_uri)
    tbl = db.create_table(table, data=data, mode="overwrite")
    if index if index is not None else len(data) >= MIN_ROWS_FOR_INDEX:
        create_index(tbl, len(data), dim, params or IndexParams())
    return tbl


def create_index(tbl: Any, rows: int, dim: int, params: IndexParams) -> None:
    from lancedb.index import IvfFlat, IvfPq, IvfSq

    partitions = max(1, round(params.partitions_per_sqrt_rows * rows**0.5))
    config: Any
    if params.kind == "IVF_PQ":
        config = IvfPq(
            distance_type="dot", num_partitions=partitions, num_sub_vectors=dim // params.sub_vector_dim
        )
    elif params.kind == "IVF_FLAT":
        config = IvfFlat(distance_type="dot", num_partitions=partitions)
    else:
        config = IvfSq(distance_type="dot", num_partitions=partitions)
    tbl.create_index("vector", config=config)  # dot: unit vectors, the inner product is the cosine


@dataclass
class Hit:
    path: str
    score: float


class VectorIndex:
    """An opened table: searches only with queries of its fingerprint."""

    def __init__(self, db_uri: str, table: str = TABLE, params: IndexParams | None = None) -> None:
        import lancedb

        self._tbl = lancedb.connect(db_uri).open_table(table)
        meta = self._tbl.schema.metadata or {}
        if META_FINGERPRINT not in meta:
            raise SystemExit(f"{db_uri}/{table} was not built from simpool-embed output (no fingerprint)")
        self.model = meta[META_MODEL].decode()
        self.fingerprint = meta[META_FINGERPRINT].decode()
        self._params = params or IndexParams()

    def __len__(self) -> int:
        return int(self._tbl.count_rows())

    def search(self, queries: np.ndarray, fingerprint: str, k: int = 10) -> list[list[Hit]]:
        """Top-k per query, best first; `fingerprint` is the one the query vectors were made with."""
        if fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"the table holds vectors of fingerprint {self.fingerprint} (model {self.model}); the"
                f" query was embedded with fingerprint {fingerprint}: re-run simpool-embed and re-index"
                " before searching with this model"
            )
        out = []
        for q in np.asarray(queries, np.float32):
            query = (
                self._tbl.search(q, vector_column_name="vector")
                .distance_type("dot")
                .limit(k)
                .nprobes(self._params.nprobes)
                .refine_factor(self._params.refine_factor)
                .select(["path", "_distance"])
            )
            res = query.to_arrow()
            scores = 1.0 - res.column("_distance").to_numpy()  # LanceDB's dot distance is 1 - q·v
            out.append(
                [Hit(p, float(s)) for p, s in zip(res.column("path").to_pylist(), scores, strict=True)]
            )
        return out
