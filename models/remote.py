"""Resolving a checkpoint argument to a local file: a path, ``hf://owner/repo/file``, or an https URL.

Downloads go through huggingface_hub (which caches them); without a network the user gets one
clear sentence instead of a stack trace.
"""

from __future__ import annotations

import re
from pathlib import Path

from simpool_serve.models.safe_load import CheckpointError

# https://huggingface.co/OWNER/REPO/(resolve|blob)/REVISION/FILE — the links in the paper's README.
_HF_URL = re.compile(r"^https://huggingface\.co/([^/]+)/([^/]+)/(?:resolve|blob)/([^/]+)/(.+)$")


def resolve_checkpoint(source: str) -> Path:
    """Returns a local path for `source`, downloading it first when it is remote."""
    if source.startswith("hf://"):
        parts = source[len("hf://") :].split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise CheckpointError(f"expected hf://OWNER/REPO/FILE, got {source!r}")
        return _hf_download(f"{parts[0]}/{parts[1]}", parts[2], None, source)
    if source.startswith(("https://", "http://")):
        match = _HF_URL.match(source)
        if match:
            owner, repo, revision, filename = match.groups()
            return _hf_download(f"{owner}/{repo}", filename, revision, source)
        return _url_download(source)
    return Path(source).expanduser()


def _hf_download(repo_id: str, filename: str, revision: str | None, source: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise CheckpointError(
            "downloading needs huggingface_hub: pip install 'simpool-serve[export]'"
        ) from exc
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as exc:  # offline, 404, gated repo: all end the same way for the user
        raise CheckpointError(
            f"cannot download {source}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(no network? download the file yourself and pass its path)"
        ) from None


def _url_download(url: str) -> Path:
    import hashlib
    import urllib.request

    cache = Path.home() / ".cache" / "simpool-serve" / "checkpoints"
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url.rsplit('/', 1)[-1]}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, partial.open("wb") as fh:
            while block := resp.read(1 << 20):
                fh.write(block)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot download {url}: {exc} (no network? download the file yourself and pass its path)"
        ) from None
    partial.replace(target)
    return target
