"""`SIMPOOL_API_KEYS_FILE`: read at start, then followed, so that keys rotate without a restart.

A Kubernetes Secret mounted as a volume (or a bind-mounted file) changes under the running process;
every `POLL_S` the watcher compares the file's inode, mtime and size with those it last acted on, and
reads it only when they differ. A file that cannot be read, or holds no usable key, keeps the keys
loaded before (an edit in progress, a Secret briefly missing must not lock every client out), with one
warning per change, not one per poll. The lifespan owns the watcher's task: `start` and `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from simpool_serve.service.keys import KeyRing, ParsedKeys, parse_keys

log = logging.getLogger("simpool_serve.keys")

POLL_S = 0.5  # a change is seen within this (plus a read), well inside the 2 s a rotation may take
_Stamp = tuple[int, int, int] | tuple[str, int | None]  # (inode, mtime_ns, size), or why stat failed


class KeyFileError(Exception):
    """The keys file cannot be read, or holds no usable key; the message says which and what to do."""


def read_key_file(path: Path) -> ParsedKeys:
    """The file's keys; KeyFileError when it cannot be read or holds none."""
    where = f"SIMPOOL_API_KEYS_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeyFileError(f"{where}: cannot read it ({reason})") from exc
    parsed = parse_keys(text)
    if not parsed.keys:
        what = f"holds no usable key ({'; '.join(parsed.problems)})" if parsed.problems else "is empty"
        raise KeyFileError(f"{where} {what}: write one key per line, as `name:key` or `key`")
    return parsed


def _stamp(path: Path) -> _Stamp:
    try:
        st = os.stat(path)  # follows the symlinks a Kubernetes Secret volume swaps on an update
    except OSError as exc:
        return ("unreadable", exc.errno)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class KeyFileWatcher:
    """Keeps `ring`'s file keys in step with the file at `path`."""

    def __init__(self, path: Path, ring: KeyRing, poll_s: float = POLL_S) -> None:
        self.path = path
        self.ring = ring
        self.poll_s = poll_s
        self._seen: _Stamp | None = None  # the file's stamp when last acted on
        self._failing: str | None = None  # the last error of the loop itself, logged once
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Reads the file into the ring at start; KeyFileError if it holds no usable key."""
        stamp = _stamp(self.path)
        self._use(read_key_file(self.path))
        self._seen = stamp
        log.info("API keys loaded", extra={"key_names": self.ring.names(), "keys_file": str(self.path)})

    def poll(self) -> None:
        """One check: reads the file if it changed since the last check, and takes its keys if usable."""
        stamp = _stamp(self.path)
        if stamp == self._seen:
            return
        try:
            parsed = read_key_file(self.path)
        except KeyFileError as exc:
            if _stamp(self.path) != stamp:  # changed while read (a write in progress): read it again
                return
            log.warning(
                f"{exc}; keeping the {len(self.ring.names())} key name(s) loaded before",
                extra={"key_names": self.ring.names()},
            )
        else:
            if _stamp(self.path) != stamp:
                return
            self._use(parsed)
            log.info("API keys reloaded", extra={"key_names": self.ring.names()})
        self._seen = stamp

    def _use(self, parsed: ParsedKeys) -> None:
        self.ring.replace_file_keys(parsed.keys)
        for problem in parsed.problems:
            log.warning(f"SIMPOOL_API_KEYS_FILE {self.path}, {problem}: that line is skipped")

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="api-keys-file")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _follow(self) -> None:
        """Polls until cancelled. A failure of a check is logged (once while it repeats) and the next
        check runs as usual: the loop ends only when the lifespan stops it."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await asyncio.to_thread(self.poll)  # a stat and a read: never on the event loop
            except Exception as exc:
                if repr(exc) != self._failing:
                    log.error("checking the API keys file failed; the keys stay as they are", exc_info=exc)
                self._failing = repr(exc)
            else:
                self._failing = None
