"""The Parquet file `simpool-embed` writes: its schema, what a re-run may keep, and atomic replacement.

Rows stay Arrow data end to end (no Python lists of floats), so resuming over a large
index costs little more than reading it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("model", pa.string()),
        ("fingerprint", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class Row:
    path: str
    sha256: str
    model: str
    fingerprint: str
    embedding: np.ndarray | None
    error: str | None


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()


def rows_to_table(rows: list[Row]) -> pa.Table:
    return pa.table(
        {
            "path": [r.path for r in rows],
            "sha256": [r.sha256 for r in rows],
            "model": [r.model for r in rows],
            "fingerprint": [r.fingerprint for r in rows],
            "embedding": pa.array(
                [None if r.embedding is None else np.asarray(r.embedding, np.float32) for r in rows],
                type=SCHEMA.field("embedding").type,
            ),
            "error": [r.error for r in rows],
        },
        schema=SCHEMA,
    )


def read_existing(path: Path) -> tuple[pa.Table, str | None]:
    """The previous run's rows (empty when there is none) and a warning when the file could not be used."""
    if not path.exists():
        return empty_table(), None
    try:
        table = pq.read_table(path)
        return table.select(SCHEMA.names).cast(SCHEMA), None
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        return (
            empty_table(),
            f"ignoring {path} (not a simpool-embed file: {exc}); it will be replaced",
        )


def reusable(existing: pa.Table, current: dict[str, str], fingerprint: str) -> pa.Table:
    """Rows of `existing` still valid: the file is unchanged (same sha256), the fingerprint is the
    current model's, and the row holds an embedding (failures are tried again)."""
    if existing.num_rows == 0:
        return existing
    paths = existing.column("path").to_pylist()
    shas = existing.column("sha256").to_pylist()
    fps = existing.column("fingerprint").to_pylist()
    ok = pc.is_null(existing.column("error")).to_pylist()
    seen: set[str] = set()
    keep = []
    for i, (p, sha, fp, good) in enumerate(zip(paths, shas, fps, ok, strict=True)):
        if good and fp == fingerprint and current.get(p) == sha and p not in seen:
            keep.append(i)
            seen.add(p)
    return existing.take(pa.array(keep, pa.int64()))


def combine(kept: pa.Table, new_rows: list[Row]) -> pa.Table:
    """Kept and new rows as one table sorted by path (a path appears once: new rows win)."""
    new = rows_to_table(new_rows)
    if new.num_rows and kept.num_rows:
        replaced = pa.array(list({r.path for r in new_rows}), pa.string())
        kept = kept.filter(pc.invert(pc.is_in(kept.column("path"), value_set=replaced)))
    table = pa.concat_tables([kept, new]) if kept.num_rows else new
    return table.sort_by("path")


class OutputError(OSError):
    """The output could not be written (disk full, no permission); the previous file is untouched."""


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or for a new file what the umask leaves of 0666 (as `open` does)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Writes next to `path` and renames over it: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes it 0600; the result should read like any file
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            kept = f"the previous {path} is unchanged" if path.exists() else f"{path} was not written"
            raise OutputError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; {kept}") from exc
        raise


# A shard directory (`simpool-embed --engine ray`): one Parquet file per batch of rows, named so that
# names sort in the order they were written; a row of a later shard replaces one of the same path.
SHARD_GLOB = "part-*.parquet"


def is_shard_dir(path: Path) -> bool:
    return path.is_dir()


def read_shards(directory: Path) -> tuple[pa.Table, list[str]]:
    """Every shard's rows, a path's latest row only, and a warning per shard that could not be read.

    Shards are only ever renamed into place whole, so an unreadable one is not ours (or the disk's
    fault): it is reported and left out, never a reason to stop.
    """
    tables: list[pa.Table] = []
    warnings: list[str] = []
    for order, shard in enumerate(sorted(directory.glob(SHARD_GLOB))):
        try:
            table = pq.read_table(shard).select(SCHEMA.names).cast(SCHEMA)
        except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
            warnings.append(f"ignoring {shard} (not a simpool-embed shard: {exc})")
            continue
        tables.append(table.append_column("_order", pa.array(np.full(table.num_rows, order, np.int64))))
    if not tables:
        return empty_table(), warnings
    table = pa.concat_tables(tables)
    # Latest row per path: sort by (path, order desc) and keep each path's first row.
    table = table.sort_by([("path", "ascending"), ("_order", "descending")])
    paths = table.column("path").combine_chunks()
    first = np.ones(len(paths), bool)
    if len(paths) > 1:
        first[1:] = pc.not_equal(paths.slice(1), paths.slice(0, len(paths) - 1)).to_numpy(
            zero_copy_only=False
        )
    return table.filter(pa.array(first)).drop_columns(["_order"]), warnings


def drop_superseded_rows(directory: Path) -> int:
    """Rewrites the shards holding a row that a later shard replaces, so each path is in one row.

    Readers of the folder as one dataset (pyarrow, pandas, DuckDB) then see each file once, as in
    the single-file output. Safe to stop at any point: a row goes only once a later shard holds its
    path, and every shard is rewritten whole (renamed into place) or removed when nothing is left.
    Returns the number of rows dropped.
    """
    shards = sorted(directory.glob(SHARD_GLOB))
    latest: dict[str, int] = {}
    columns: list[list[str] | None] = []
    for order, shard in enumerate(shards):
        try:
            paths = pq.read_table(shard, columns=["path"]).column("path").to_pylist()
        except (OSError, KeyError, ValueError, pa.ArrowException):
            columns.append(None)  # read_shards reports it; never touched here
            continue
        columns.append(paths)
        latest.update(dict.fromkeys(paths, order))
    dropped = 0
    for order, (shard, paths) in enumerate(zip(shards, columns, strict=True)):
        if paths is None:
            continue
        keep = [latest[p] == order for p in paths]
        if all(keep):
            continue
        dropped += keep.count(False)
        if not any(keep):
            shard.unlink()
            continue
        table = pq.read_table(shard)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        write_atomic(table.filter(pa.array(keep)).replace_schema_metadata(None), shard, meta)
    return dropped


def read_output(path: Path) -> tuple[pa.Table, list[str]]:
    """What `simpool-embed` wrote at `path`: one Parquet file or a shard directory, one row per path."""
    if is_shard_dir(path):
        return read_shards(path)
    table, warning = read_existing(path)
    return table, [warning] if warning else []
