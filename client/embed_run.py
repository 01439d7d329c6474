"""`simpool-embed`'s work (embed_cli.py checks its extra first): every image under a folder into a
resumable Parquet file.

Exit codes: 0 every image has an embedding; 1 some images failed (listed, and in the
`error` column); 2 the run could not start or had to stop (bad arguments, unreachable
service, wrong key, unknown model); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM
(`timeout`, a scheduler, Kubernetes): either way what was done is saved and a re-run resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from simpool_serve.client import store
from simpool_serve.client.backends import Backend, FatalError, HttpBackend, LocalBackend, default_url
from simpool_serve.client.descriptor_args import add_descriptor_arguments, descriptor_of
from simpool_serve.client.progress import progress_bar
from simpool_serve.client.ray_args import add_ray_arguments, check_ray_arguments, reject_ray_only
from simpool_serve.client.retry import DEFAULT_CONNECT_TIMEOUT
from simpool_serve.client.walk import find_images, sha256_bytes
from simpool_serve.spec import sha256_file

PROG = "simpool-embed"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Embed every image under SOURCE_DIR (recursively) into a Parquet file; "
        "re-runs skip files whose content and model fingerprint are unchanged.",
    )
    p.add_argument("source", metavar="SOURCE_DIR", help="a folder (with --engine ray also a URI: s3://...)")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE.parquet", help="with --engine ray: a folder"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="simpool-serve to use (default: $SIMPOOL_URL or http://127.0.0.1:8000)")
    where.add_argument(
        "--local", type=Path, metavar="MODEL_DIR", help="run the model in-process, no server needed"
    )
    p.add_argument("--model", help="model name (default: the service's default model)")
    p.add_argument("--concurrency", type=int, default=4, help="batches in flight at once (default 4)")
    p.add_argument("--batch", type=int, default=16, help="images per request / batch (default 16)")
    p.add_argument("--api-key", default=None, help="service API key (default: $SIMPOOL_API_KEY)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request (default 120)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help=f"seconds to wait for a connection to the service (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    p.add_argument(
        "--retry-timeout", type=float, default=120.0, help="seconds a batch may wait out 503s (default 120)"
    )
    p.add_argument(
        "--checkpoint-every", type=float, default=60.0, help="seconds between saves of partial results"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_descriptor_arguments(p)
    add_ray_arguments(p)
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.batch < 1:
        p.error("--concurrency and --batch must be >= 1")
    if args.engine == "ray":
        return check_ray_arguments(p, args)
    reject_ray_only(p, args)
    args.source = Path(args.source)
    if not args.source.is_dir():
        p.error(f"{args.source} is not a directory")
    return args


@dataclass
class Run:
    """What a run has decided and produced so far; saving it at any moment gives a valid file."""

    out: Path
    kept: pa.Table
    model: str
    fingerprint: str
    new_rows: list[store.Row] = field(default_factory=list)
    last_save: float = field(default_factory=time.monotonic)

    def save(self) -> None:
        meta = {"simpool.model": self.model, "simpool.fingerprint": self.fingerprint}
        store.write_atomic(store.combine(self.kept, self.new_rows), self.out, meta)
        self.last_save = time.monotonic()

    @property
    def failures(self) -> list[store.Row]:
        return [r for r in self.new_rows if r.error is not None]


def _read(root: Path, rel: str) -> tuple[bytes | None, str | None]:
    try:
        return (root / rel).read_bytes(), None
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"


async def _embed_batch(backend: Backend, root: Path, paths: list[str]) -> list[store.Row]:
    files = await asyncio.to_thread(lambda: [_read(root, p) for p in paths])
    readable = [i for i, (data, _) in enumerate(files) if data is not None]
    outcomes = iter(await backend.embed([files[i][0] for i in readable])) if readable else iter(())
    rows: list[store.Row] = []
    for path, (data, err) in zip(paths, files, strict=True):
        if data is None:
            rows.append(store.Row(path, "", backend.model, backend.fingerprint, None, err))
            continue
        o = next(outcomes)
        rows.append(store.Row(path, sha256_bytes(data), backend.model, o.fingerprint, o.embedding, o.error))
    return rows


async def _embed_all(
    backend: Backend,
    root: Path,
    todo: list[str],
    *,
    batch: int,
    concurrency: int,
    on_rows: Callable[[list[store.Row]], None],
) -> None:
    """`concurrency` workers take batches in path order; results are handed over as they finish."""
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for i in range(0, len(todo), batch):
        queue.put_nowait(todo[i : i + batch])

    async def worker() -> None:
        while not queue.empty():
            paths = queue.get_nowait()
            on_rows(await _embed_batch(backend, root, paths))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_backend(args: argparse.Namespace) -> Backend:
    if args.local is not None:
        return await LocalBackend.open(args.local, model=args.model, descriptor=descriptor_of(args))
    return await HttpBackend.open(
        args.url or default_url(),
        model=args.model,
        api_key=args.api_key,
        concurrency=args.concurrency,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        retry_timeout=args.retry_timeout,
        descriptor=descriptor_of(args),
    )


def _stop_on_sigterm(stopped: list[int]) -> None:
    """SIGTERM cancels the run like Ctrl-C does, so that what was done is saved (it used to kill the
    process with nothing written). Left alone where SIGTERM is ignored on purpose."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    task = asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:
        stopped.append(signal.SIGTERM)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)


async def _run(args: argparse.Namespace, state: list[Run], stopped: list[int]) -> int:
    _stop_on_sigterm(stopped)
    backend = await _open_backend(args)
    try:
        root = args.source
        paths = find_images(root)
        existing, warning = store.read_existing(args.out)
        if warning:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        # Hash first: deciding what to skip needs only the bytes on disk, not the model.
        current = await asyncio.to_thread(lambda: {p: _safe_sha(root / p) for p in paths})
        kept = store.reusable(existing, current, backend.fingerprint)
        kept_paths = set(kept.column("path").to_pylist())
        todo = [p for p in paths if p not in kept_paths]
        run = Run(args.out, kept, backend.model, backend.fingerprint)
        state.append(run)
        bar = progress_bar(len(todo), f"{PROG} {backend.model}", args.no_progress)

        def on_rows(rows: list[store.Row]) -> None:
            run.new_rows.extend(rows)
            bar.update(len(rows))
            if time.monotonic() - run.last_save >= args.checkpoint_every:
                run.save()

        with bar:
            await _embed_all(
                backend, root, todo, batch=args.batch, concurrency=args.concurrency, on_rows=on_rows
            )
        run.save()
        _report(run, len(paths), kept.num_rows)
        return 1 if run.failures else 0
    finally:
        await backend.aclose()


def _safe_sha(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _report(run: Run, total: int, unchanged: int) -> None:
    failures = run.failures
    embedded = len(run.new_rows) - len(failures)
    print(
        f"{PROG}: {_count(total, 'image')}: {embedded} embedded, {unchanged} unchanged, "
        f"{len(failures)} failed -> {run.out} (model {run.model}, fingerprint {run.fingerprint})"
    )
    changed = {r.fingerprint for r in run.new_rows if r.error is None} - {run.fingerprint}
    if changed:
        print(
            f"{PROG}: warning: the model changed during the run (fingerprints {sorted(changed)});"
            " run again to re-embed with the current model",
            file=sys.stderr,
        )
    if failures:
        print(f"{PROG}: {_count(len(failures), 'image')} failed:")
        for r in failures:
            print(f"  {r.path}: {r.error}")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (tqdm and test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _show_client_warnings() -> None:
    """The client's warnings (a connection it is waiting for) as `simpool-embed: warning: ...` lines."""
    logger = logging.getLogger("simpool_serve.client")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine == "ray":
        from simpool_serve.client.ray_args import run_ray

        return run_ray(args)
    _show_client_warnings()
    state: list[Run] = []
    stopped: list[int] = []
    try:
        return asyncio.run(_run(args, state, stopped))
    except store.OutputError as exc:  # saving again would fail the same way
        print(f"{PROG}: error: {exc.strerror}", file=sys.stderr)
        return 2
    except FatalError as exc:
        if state:
            state[0].save()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. the runtime failing in --local: keep what was done, then say why
        if state:
            state[0].save()
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _stopped(state, args.out, "interrupted", 130)
    except asyncio.CancelledError:
        if not stopped:
            raise
        return _stopped(state, args.out, "terminated (SIGTERM)", 128 + signal.SIGTERM)


def _stopped(state: list[Run], out: Path, how: str, code: int) -> int:
    """Saves what was done before the signal; a re-run resumes from it."""
    if state:
        state[0].save()
        print(f"{PROG}: {how}; {_count(len(state[0].new_rows), 'new row')} saved to {out}", file=sys.stderr)
    else:
        print(f"{PROG}: {how} before anything was embedded", file=sys.stderr)
    return code


def _count(n: int, noun: str) -> str:
    """`1 image`, `2 images`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


if __name__ == "__main__":
    sys.exit(main())
