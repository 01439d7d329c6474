"""The served models, one version each: loaded, swapped and unloaded while requests run.

A request holds a lease on the version it starts on (`Version.hold`) until its answer is built. A load
or reload verifies and warms the new version beside the serving one, then swaps one reference; the
old version closes once its last lease is returned, and its memory goes back. So no request sees a
half-loaded model, none loses the version it started on, and each answer's fingerprint is its own
version's. A folder still being written (`Incomplete`) is not a failure: the serving version stays,
and the next rescan tries again once the files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from simpool_serve.service.engine.errors import EngineError, Incomplete, Kind, not_ready
from simpool_serve.service.engine.memory import release_memory
from simpool_serve.service.engine.models import (
    LoadedModel,
    ModelFolder,
    Signature,
    folder_names,
    signature,
)
from simpool_serve.service.metrics import Metrics

log = logging.getLogger("simpool_serve.repository")

State = Literal["READY", "UNAVAILABLE", "LOADING"]
OpenModel = Callable[[ModelFolder], Awaitable[LoadedModel]]
CloseModel = Callable[[LoadedModel], Awaitable[None]]


def describe(exc: BaseException) -> str:
    """A failed load's reason: the message of our own errors (they say what to do), else the type too."""
    return str(exc) if isinstance(exc, ValueError) and str(exc) else f"{type(exc).__name__}: {exc}"


@dataclass(eq=False)
class Version:
    """One loaded version of a model and the requests holding it; `drained` is set once it is retired
    and the last of them has returned it."""

    _model: LoadedModel | None
    signature: Signature  # its files when they were read: a rescan reloads when they differ
    leases: int = 0
    retired: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model(self) -> LoadedModel:
        assert self._model is not None, "a closed version"
        return self._model

    def take(self) -> LoadedModel:
        """The model, forgotten here: once its closer drops it too, nothing holds its sessions."""
        model, self._model = self.model, None
        return model

    @contextlib.contextmanager
    def hold(self) -> Iterator[LoadedModel]:
        """The model, kept serving (not closed) until the `with` block ends."""
        self.leases += 1
        try:
            yield self.model
        finally:
            self.leases -= 1
            if self.retired and self.leases == 0:
                self.drained.set()

    def retire(self) -> None:
        self.retired = True
        if self.leases == 0:
            self.drained.set()


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One model as the repository index shows it (Triton's states: READY, UNAVAILABLE, LOADING), with
    the reason when it is not READY, or what its READY version hides."""

    name: str
    version: str
    state: State
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """Why a model is not (or not only) what it serves: loading, its load failed, its folder is
    incomplete. With a serving version, the index shows READY with this reason."""

    state: State
    reason: str
    incomplete: bool = False  # its folder is still being written: worth coming back for


class Repository:
    """Owns which version of each model serves; one load or unload of a name at a time."""

    def __init__(
        self, model_dir: Path, open_model: OpenModel, close_model: CloseModel, metrics: Metrics
    ) -> None:
        self.model_dir = model_dir
        self._open = open_model
        self._close = close_model
        self._metrics = metrics
        self._served: dict[str, Version] = {}
        self._notes: dict[str, Note] = {}
        self._tried: dict[str, Signature] = {}  # the files of each failed or incomplete attempt
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # -- what serves -----------------------------------------------------------------------------

    def version(self, name: str) -> Version | None:
        return self._served.get(name)

    @property
    def models(self) -> dict[str, LoadedModel]:
        return {name: v.model for name, v in sorted(self._served.items())}

    def note(self, name: str) -> Note | None:
        return self._notes.get(name)

    def set_note(self, name: str, state: State, reason: str) -> None:
        self._notes[name] = Note(state, reason)

    def names(self) -> list[str]:
        """Every model the index shows: the folders on disk, the served models and the noted ones."""
        return sorted(set(folder_names(self.model_dir)) | set(self._served) | set(self._notes))

    def entries(self) -> list[RepositoryEntry]:
        """Every model the index shows and its state, sorted by name."""
        out = []
        for name in self.names():
            version, note = self._served.get(name), self._notes.get(name)
            if version is not None and not version.model.batcher.alive:
                out.append(RepositoryEntry(name, "1", "UNAVAILABLE", "its batcher has stopped"))
            elif version is not None:
                out.append(RepositoryEntry(name, "1", "READY", note.reason if note else ""))
            elif note is not None:
                out.append(RepositoryEntry(name, "1", note.state, note.reason))
            else:
                out.append(RepositoryEntry(name, "1", "UNAVAILABLE", "not loaded"))
        return out

    def missing(self, name: str, *, by_default: bool) -> EngineError:
        """Why `name` does not serve: NOT_READY while it loads (or its folder is still being written),
        NOT_FOUND otherwise, saying what is served (and, `by_default`, that no default model is loaded)."""
        note = self._notes.get(name)
        if note is not None and note.state == "LOADING":
            return not_ready(f"model {name!r} is still loading", retry_after_s=5)
        if note is not None and note.state == "UNAVAILABLE" and note.incomplete:
            return not_ready(
                f"model {name!r} is not loaded yet: its folder is {note.reason}", retry_after_s=5
            )
        served = sorted(self._served)
        if by_default:
            return EngineError(
                Kind.NOT_FOUND,
                f"no default model is loaded: the default model {name!r} is not served (served: {served})",
                "unknown_model",
            )
        shown = name if len(name) <= 100 else f"{name[:100]}..."  # not echoed whole
        why = f" ({note.reason})" if note is not None else ""
        return EngineError(Kind.NOT_FOUND, f"unknown model {shown!r}{why}; served: {served}", "unknown_model")

    # -- loading ---------------------------------------------------------------------------------

    async def load(self, name: str, folder: ModelFolder | None = None, *, rescan: bool = False) -> bool:
        """Loads (or reloads) `name` from `folder` (default: its folder in the model directory), swapping
        it in once verified and warm; True when a new version now serves.

        With `rescan`, unchanged files are not loaded again (nor files that already failed), and an
        incomplete folder just waits. Otherwise a failure is raised. Either way a failure keeps the
        serving version and is logged, counted and noted for the index.
        """
        async with self._lock(name):
            path = folder.path.parent if folder is not None else self.model_dir / name
            files = signature(path)
            current = self._served.get(name)
            if rescan and files in ((current.signature if current else None), self._tried.get(name)):
                return False
            if current is None:
                self._notes[name] = Note("LOADING", "loading")
            started = time.perf_counter()
            try:
                model = await self._open(folder or ModelFolder.read(path))
            except Exception as exc:
                self._tried[name] = files
                if rescan and isinstance(exc, Incomplete):
                    self._noted_incomplete(name, current, exc)
                    return False
                self._failed(name, current, exc)
                raise
            self._tried.pop(name, None)
            self._notes.pop(name, None)
            self._served[name] = Version(model, files)
            self._metrics.model_loads.labels(name, "reloaded" if current else "loaded").inc()
            log.info(
                "model version swapped in" if current else "model serving",
                extra={
                    "model": name,
                    "fingerprint": model.fingerprint,
                    "previous_fingerprint": current.model.fingerprint if current else None,
                    "load_seconds": round(time.perf_counter() - started, 3),
                },
            )
        if current is not None:
            self._retire(current)
        return True

    def _noted_incomplete(self, name: str, current: Version | None, exc: BaseException) -> None:
        reason = f"incomplete, waiting for the rest of its files: {exc}"
        if current is None:
            self._notes[name] = Note("UNAVAILABLE", reason, incomplete=True)
        else:
            self._notes[name] = Note("READY", f"serving its previous version; the new one is {reason}", True)
        log.info("model folder incomplete", extra={"model": name, "reason": str(exc)})

    def _failed(self, name: str, current: Version | None, exc: BaseException) -> None:
        reason = describe(exc)
        self._metrics.model_loads.labels(name, "failed").inc()
        if current is None:
            self._notes[name] = Note("UNAVAILABLE", f"load failed: {reason}")
        else:
            self._notes[name] = Note(
                "READY", f"serving its previous version; loading the new one failed: {reason}"
            )
        log.warning(
            "model load failed; %s",
            "the previous version keeps serving" if current else "the model is not served",
            exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
            extra={"model": name, "error": reason},
        )

    async def unload(self, name: str, *, wait: bool = True) -> bool:
        """Stops serving `name`: new requests get 404 at once; those holding it finish on it, then it
        closes (awaited when `wait`). False when it was not served."""
        async with self._lock(name):
            version = self._served.pop(name, None)
            self._notes.pop(name, None)
            self._tried.pop(name, None)
        if version is None:
            return False
        log.info("model unloaded", extra={"model": name, "fingerprint": version.model.fingerprint})
        task = self._retire(version)
        if wait:
            await asyncio.shield(task)
        return True

    async def rescan(self) -> None:
        """One `poll` pass: a folder gone unloads, a new or changed one loads, an incomplete one waits."""
        try:
            folders = {p.name for p in self.model_dir.iterdir() if p.is_dir()}
        except OSError as exc:  # the directory itself went away (a remount): keep serving what serves
            log.warning(
                "cannot read the model directory; keeping the served models", extra={"error": str(exc)}
            )
            return
        for name in sorted(set(self._served) - folders):
            await self.unload(name, wait=False)
        for name in sorted(set(self._notes) - folders - set(self._served)):
            self._notes.pop(name, None)
            self._tried.pop(name, None)
        for name in sorted((set(folder_names(self.model_dir)) | set(self._served)) & folders):
            with contextlib.suppress(Exception):  # logged, counted and noted by `load`
                await self.load(name, rescan=True)

    # -- retiring --------------------------------------------------------------------------------

    def _retire(self, version: Version) -> asyncio.Task[None]:
        version.retire()
        task = asyncio.get_running_loop().create_task(
            self._close_when_drained(version), name=f"retire:{version.model.name}"
        )
        self._retiring.add(task)
        task.add_done_callback(self._retired)
        return task

    async def _close_when_drained(self, version: Version) -> None:
        started = time.perf_counter()
        await version.drained.wait()
        drained = time.perf_counter()
        model = version.take()
        name, fingerprint = model.name, model.fingerprint
        await self._close(model)
        del model  # the last reference: its sessions are freed now, and the allocator can give pages back
        await asyncio.to_thread(release_memory)
        log.info(
            "model version closed",
            extra={
                "model": name,
                "fingerprint": fingerprint,
                "drain_seconds": round(drained - started, 3),
                "close_seconds": round(time.perf_counter() - drained, 3),
            },
        )

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing a model version failed", exc_info=task.exception())

    async def close(self) -> None:
        """Retires every version and waits until each has drained and closed."""
        for name in list(self._served):
            self._retire(self._served.pop(name))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())
