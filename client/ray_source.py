"""Where `--engine ray` reads images from: a local folder or a filesystem URI (pyarrow, else fsspec).

A `Source` is small and picklable: Ray ships it to every read task, which reopens the filesystem
there, so the same job reads a bucket from any node of a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from simpool_serve.client.backends import FatalError
from simpool_serve.client.walk import IMAGE_EXTENSIONS, find_images


def _is_uri(source: str) -> bool:
    return "://" in source


@dataclass
class Source:
    """`location` is a local folder, or a URI such as s3://bucket/prefix, gs://..., file:///..."""

    location: str
    _fs: Any = field(default=None, repr=False, compare=False)
    _root: str = field(default="", repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}  # the filesystem is reopened where it is used

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location, self._fs, self._root = state["location"], None, ""

    def _open(self) -> tuple[Any, str]:
        if self._fs is None:
            self._fs, self._root = _filesystem(self.location)
        return self._fs, self._root

    def list_images(self) -> list[str]:
        """Image paths relative to the source, '/'-separated and sorted (as `--local` records them)."""
        if not _is_uri(self.location):
            return find_images(Path(self.location))
        fs, root = self._open()
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=False))
        found = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = PurePosixPath(info.path).relative_to(PurePosixPath(root)).as_posix()
            name = PurePosixPath(rel).name
            if PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.append(rel)
        return sorted(found)

    def read(self, rel: str) -> bytes:
        if not _is_uri(self.location):
            return (Path(self.location) / rel).read_bytes()
        fs, root = self._open()
        with fs.open_input_stream(f"{root.rstrip('/')}/{rel}") as fh:
            return fh.read()


def _filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's own filesystems first (file, s3, gs, hdfs, abfs when built in), then any fsspec one."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as native_error:
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:
            raise FatalError(f"cannot open {uri}: {native_error}; fsspec: {exc}") from exc
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


def open_source(location: str) -> Source:
    """A checked source: the folder exists, or the URI's filesystem opens and the prefix is a folder."""
    if not _is_uri(location):
        if not Path(location).is_dir():
            raise FatalError(f"{location} is not a directory")
        return Source(str(Path(location).resolve()))
    source = Source(location)
    try:
        fs, root = source._open()
        info = fs.get_file_info(root)
    except OSError as exc:
        raise FatalError(f"cannot open {location}: {exc}") from exc
    if info.type != pafs.FileType.Directory:
        raise FatalError(f"{location} is not a directory")
    return source
