"""`simpool-embed --engine ray`: the same job as `--local`, spread over a Ray cluster with Ray Data.

Files are listed on the driver, read by Ray Data tasks, and embedded by a pool of actors that each
hold one `LocalBackend` (the service's own decoding and ONNX Runtime code). The driver alone writes
the output: rows arrive as they are embedded and go into Parquet shards renamed into place whole,
so a driver killed at any moment leaves only complete shards, and every shard it reported is on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simpool_serve.client import store
from simpool_serve.client.backends import FatalError, LocalBackend
from simpool_serve.client.descriptor_args import descriptor_of
from simpool_serve.client.progress import progress_bar
from simpool_serve.client.ray_source import Source, open_source

PROG = "simpool-embed"
SKIPPED = "_skipped"  # actor output only: the file is unchanged since a previous run, nothing to write


@dataclass(frozen=True)
class Plan:
    """How the job uses the cluster: actors, threads and devices per actor, rows per shard."""

    workers: int
    threads: int
    actor_cpus: float
    actor_gpus: float
    reader_cpus: float

    @classmethod
    def for_cluster(cls, cpus: float, gpus: float, workers: int | None, use_gpu: bool) -> Plan:
        """One actor per core (per GPU on a GPU cluster) unless told; each gets its share of the cores.

        The actors reserve a little less than the cores they run on: Ray schedules the read tasks on
        the same CPUs, and if the actors held every one of them (2 cores, 2 actors of 1 CPU) no read
        task could ever start and the job would wait forever. Reading is light next to inference, so
        the threads are still sized as if each actor had its full share.
        """
        cpus = max(1.0, cpus)
        on_gpu = use_gpu and gpus >= 1
        n = workers or (int(gpus) if on_gpu else int(cpus))
        n = max(1, n)
        threads = max(1, int(cpus // n))
        reader = 0.25
        actor_cpus = max(0.1, min(float(threads), (cpus - reader) / n))
        actor_gpus = min(1.0, gpus / n) if on_gpu else 0.0
        return cls(n, threads, round(actor_cpus, 3), actor_gpus, reader)


class EmbedActor:
    """One `LocalBackend` per actor; skips files whose sha256 and fingerprint are already in OUT."""

    def __init__(
        self,
        model_dir: str,
        model: str | None,
        threads: int,
        known: dict[str, str],
        descriptor: dict[str, Any],
    ) -> None:
        # Sizes the session before it is built: the backend reads its settings from the environment.
        os.environ.setdefault("SIMPOOL_INTRA_OP_THREADS", str(threads))
        # The backend's engine lives on one event loop for the actor's lifetime; each batch runs on it.
        self._loop = asyncio.new_event_loop()
        opened = LocalBackend.open(Path(model_dir), model=model, descriptor=descriptor)
        self._backend = self._loop.run_until_complete(opened)
        self._known = known
        # When Ray ends the actor (or it is collected), the engine's batcher tasks are stopped and the
        # loop closed: left pending, each printed "Task was destroyed but it is pending!" at exit.
        self._close = weakref.finalize(self, _close_backend, self._loop, self._backend)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import hashlib

        paths = batch.column("path").to_pylist()
        datas = batch.column("data").to_pylist()
        read_errors = batch.column("read_error").to_pylist()
        fp, model = self._backend.fingerprint, self._backend.model
        rows: list[store.Row | None] = [None] * len(paths)
        skipped = [False] * len(paths)
        todo: list[int] = []
        shas: list[str] = [""] * len(paths)
        for i, (path, data, err) in enumerate(zip(paths, datas, read_errors, strict=True)):
            if err is not None:
                rows[i] = store.Row(path, "", model, fp, None, err)
                continue
            shas[i] = hashlib.sha256(data).hexdigest()
            if self._known.get(path) == shas[i]:
                skipped[i] = True
                rows[i] = store.Row(path, shas[i], model, fp, None, None)
            else:
                todo.append(i)
        if todo:
            outcomes = self._loop.run_until_complete(self._backend.embed([datas[i] for i in todo]))
            for i, o in zip(todo, outcomes, strict=True):
                rows[i] = store.Row(paths[i], shas[i], model, o.fingerprint, o.embedding, o.error)
        table = store.rows_to_table([r for r in rows if r is not None])
        return table.append_column(SKIPPED, pa.array(skipped, pa.bool_()))


def _close_backend(loop: asyncio.AbstractEventLoop, backend: LocalBackend) -> None:
    """Closes an actor's engine on its own loop (no reference to the actor: a weakref finalizer)."""
    if loop.is_closed():
        return
    try:
        loop.run_until_complete(backend.aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _read_files(batch: pa.Table, source: Source) -> pa.Table:
    """Bytes of each listed file, or why it could not be read (a row, never a failed task)."""
    datas: list[bytes | None] = []
    errors: list[str | None] = []
    for rel in batch.column("path").to_pylist():
        try:
            datas.append(source.read(rel))
            errors.append(None)
        except OSError as exc:
            datas.append(None)
            errors.append(f"cannot read file: {exc.strerror or exc}")
    return pa.table(
        {"path": batch.column("path"), "data": pa.array(datas, pa.binary()), "read_error": errors},
    )


class ShardWriter:
    """Collects rows on the driver and writes them as shards: whole files, renamed into place."""

    def __init__(self, out: Path, model: str, fingerprint: str, rows_per_shard: int, every_s: float) -> None:
        self.out = out
        self._meta = {"simpool.model": model, "simpool.fingerprint": fingerprint}
        self._rows_per_shard = rows_per_shard
        self._every_s = every_s
        self._run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self._seq = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last = time.monotonic()
        self.written = 0
        self.failures: list[tuple[str, str]] = []
        self.fingerprints: set[str] = set()

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self._rows_per_shard or time.monotonic() - self._last >= self._every_s:
            self.flush(whole_shards_only=True)

    def flush(self, whole_shards_only: bool = False) -> None:
        """Writes the pending rows as shards of at most `rows_per_shard` (only full ones if asked)."""
        self._last = time.monotonic()
        if not self._pending:
            return
        pending = pa.concat_tables(self._pending)
        size = self._rows_per_shard
        end = pending.num_rows - pending.num_rows % size if whole_shards_only else pending.num_rows
        if whole_shards_only and end == 0:  # the time is up: write what there is
            end = pending.num_rows
        for start in range(0, end, size):
            self._write(pending.slice(start, min(size, end - start)))
        rest = pending.slice(end)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _write(self, table: pa.Table) -> None:
        table = table.sort_by("path")
        path = self.out / f"part-{self._run}-{self._seq:06d}.parquet"
        store.write_atomic(table, path, self._meta)
        # Reported only now that the shard is in place under its final name.
        self._seq += 1
        self.written += table.num_rows
        errors = table.column("error")
        bad = pc.is_valid(errors).to_numpy(zero_copy_only=False)
        paths = table.column("path").to_pylist()
        self.failures += [(paths[i], errors[i].as_py()) for i in np.flatnonzero(bad)]
        self.fingerprints |= set(table.column("fingerprint").unique().to_pylist())
        print(f"{PROG}: wrote {path.name} ({table.num_rows} rows, {self.written} this run)", file=sys.stderr)


async def _probe(model_dir: Path, model: str | None, descriptor: dict[str, Any]) -> tuple[str, str]:
    """The model's name and the descriptor's fingerprint, from the same backend the actors open (so the
    same checks)."""
    backend = await LocalBackend.open(model_dir, model=model, descriptor=descriptor)
    try:
        return backend.model, backend.fingerprint
    finally:
        await backend.aclose()


def _known(out: Path, fingerprint: str) -> dict[str, str]:
    """path -> sha256 of the rows a re-run may keep (embedded, same fingerprint)."""
    existing, warnings = store.read_shards(out)
    for w in warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    if existing.num_rows == 0:
        return {}
    good = existing.filter(
        pc.and_(pc.is_null(existing.column("error")), pc.equal(existing.column("fingerprint"), fingerprint))
    )
    return dict(zip(good.column("path").to_pylist(), good.column("sha256").to_pylist(), strict=True))


def _clean_stale_temps(out: Path) -> None:
    """A driver killed while writing leaves a hidden temporary file; it never became a shard."""
    for tmp in out.glob(".part-*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _start_ray(address: str | None) -> Any:
    import ray

    from simpool_serve.service.settings import available_cores

    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=available_cores(), **kwargs)
    return ray


def _wants_gpu() -> bool:
    from simpool_serve.service.settings import Settings

    providers = Settings().providers
    return providers is None or "CUDAExecutionProvider" in providers


def run(args: argparse.Namespace) -> int:
    """The whole job; exit codes as `simpool-embed`'s (0 done, 1 some images failed, 2 cannot run)."""
    if args.local is None:
        raise FatalError("--engine ray runs the model inside the job: give --local MODEL_DIR")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise FatalError(f"{out} exists and is not a directory (--engine ray writes a folder of shards)")
    source = open_source(args.source)
    # Checked here first, so a bad model folder stops the run before a cluster is involved.
    model, fingerprint = asyncio.run(_probe(args.local, args.model, descriptor_of(args)))
    paths = source.list_images()
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out)
    store.drop_superseded_rows(out)  # what an interrupted run left twice
    known = _known(out, fingerprint)

    started = time.monotonic()
    ray = _start_ray(args.ray_address)
    clock = Clock(started, ray_up=time.monotonic())
    try:
        return _run_on_ray(ray, args, source, paths, known, model, fingerprint, clock)
    finally:
        ray.shutdown()


def _run_on_ray(
    ray: Any,
    args: argparse.Namespace,
    source: Source,
    paths: list[str],
    known: dict[str, str],
    model: str,
    fingerprint: str,
    clock: Clock,
) -> int:
    import ray.data

    resources = ray.cluster_resources()
    plan = Plan.for_cluster(resources.get("CPU", 1), resources.get("GPU", 0), args.workers, _wants_gpu())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours says files done, images/s and ETA
    ctx.print_on_execution_start = False
    writer = ShardWriter(args.out, model, fingerprint, args.shard_rows, args.checkpoint_every)
    bar = progress_bar(len(paths), f"{PROG} ray {model} x{plan.workers}", args.no_progress)
    unchanged = 0
    if paths:
        listing = pa.table({"path": pa.array(paths, pa.string())})
        per_block = max(1, min(args.batch * 4, math.ceil(len(paths) / (plan.workers * 4))))
        blocks = [listing.slice(i, per_block) for i in range(0, len(paths), per_block)]
        ds = (
            ray.data.from_arrow(blocks)
            .map_batches(
                _read_files,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"source": source},
                num_cpus=plan.reader_cpus,
            )
            .map_batches(
                EmbedActor,
                batch_format="pyarrow",
                batch_size=args.batch,
                fn_constructor_kwargs={
                    "model_dir": str(args.local.resolve()),
                    "model": model,
                    "descriptor": descriptor_of(args),
                    "threads": plan.threads,
                    "known": known,
                },
                compute=ray.data.ActorPoolStrategy(size=plan.workers),
                num_cpus=plan.actor_cpus,
                num_gpus=plan.actor_gpus,
            )
        )
        with bar, _flush_on_interrupt(writer):
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                skipped = batch.column(SKIPPED)
                n_skipped = pc.sum(skipped).as_py() or 0
                unchanged += n_skipped
                writer.add(batch.filter(pc.invert(skipped)).drop_columns([SKIPPED]).cast(store.SCHEMA))
                clock.rows(batch.num_rows)
                bar.update(batch.num_rows)
                bar.set_postfix(written=writer.written, unchanged=unchanged, refresh=False)
        writer.flush()
    # A file embedded again (it failed before, or changed) keeps only its new row: each file once.
    store.drop_superseded_rows(args.out)
    _report(writer, len(paths), unchanged, model, fingerprint)
    print(f"{PROG}: {clock.summary()}", file=sys.stderr)
    return 1 if writer.failures else 0


@dataclass
class Clock:
    """Where a run's time went: starting Ray, starting the actors (first rows), then steady work."""

    start: float
    ray_up: float
    first: float | None = None
    last: float | None = None
    n: int = 0

    def rows(self, n: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last, self.n = now, self.n + n

    def summary(self) -> str:
        text = f"ray started in {self.ray_up - self.start:.1f} s"
        if self.first is None or self.last is None:
            return text
        text += f", first rows after {self.first - self.start:.1f} s"
        after_start = self.n / max(1e-9, self.last - self.ray_up)
        return (
            text + f", {self.n} images in {self.last - self.start:.1f} s ({after_start:.1f} images/s once up)"
        )


@contextlib.contextmanager
def _flush_on_interrupt(writer: ShardWriter) -> Any:
    """Ctrl-C: the rows already embedded go into one last shard before the run stops."""
    try:
        yield
    except KeyboardInterrupt:
        writer.flush()
        raise


def _report(writer: ShardWriter, total: int, unchanged: int, model: str, fingerprint: str) -> None:
    embedded = writer.written - len(writer.failures)
    print(
        f"{PROG}: {total} images: {embedded} embedded, {unchanged} unchanged, {len(writer.failures)} failed"
        f" -> {writer.out}/ (model {model}, fingerprint {fingerprint})"
    )
    if writer.fingerprints - {fingerprint}:
        print(
            f"{PROG}: warning: the model changed during the run; run again to re-embed with the new model",
            file=sys.stderr,
        )
    if writer.failures:
        print(f"{PROG}: {len(writer.failures)} images failed:")
        for path, err in sorted(writer.failures):
            print(f"  {path}: {err}")
