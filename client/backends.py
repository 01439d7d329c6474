"""Where `simpool-embed` gets embeddings from: a running service, or the service's own code in-process.

Both answer per image (an embedding or an error), so one bad file never costs its batch-mates.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from simpool_serve.client.async_client import AsyncSimPoolClient
from simpool_serve.client.errors import APIError, SimPoolConnectionError, SimPoolError
from simpool_serve.client.retry import RetryPolicy


class FatalError(Exception):
    """Something no image can succeed past (wrong key, unknown model, unusable model folder)."""


@dataclass(frozen=True)
class Outcome:
    embedding: np.ndarray | None  # float32 [D], L2-normalised
    error: str | None
    fingerprint: str


class Backend(Protocol):
    model: str
    fingerprint: str

    async def embed(self, images: list[bytes]) -> list[Outcome]: ...

    async def aclose(self) -> None: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


class HttpBackend:
    """Sends batches to simpool-serve; `concurrency` requests in flight at most."""

    def __init__(self, client: AsyncSimPoolClient, model: str, fingerprint: str) -> None:
        self._client = client
        self.model = model
        self.fingerprint = fingerprint

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        model: str | None,
        api_key: str | None,
        concurrency: int,
        timeout: float,
        connect_timeout: float,
        retry_timeout: float,
    ) -> HttpBackend:
        client = AsyncSimPoolClient(
            url,
            api_key=api_key,
            model=model,
            max_concurrency=concurrency,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retry=RetryPolicy(total_timeout=retry_timeout),
        )
        try:
            infos = await client.models()
        except SimPoolConnectionError as exc:  # it says which URL and what to check
            await client.aclose()
            raise FatalError(str(exc)) from exc
        except (APIError, SimPoolError) as exc:
            await client.aclose()
            raise FatalError(f"cannot list the models of {url}: {exc}") from exc
        chosen = [m for m in infos if (m.name == model if model else m.default)]
        if not chosen and not model and len(infos) == 1:
            chosen = infos
        if not chosen:
            await client.aclose()
            names = ", ".join(m.name for m in infos) or "none"
            raise FatalError(f"{url} serves no model {model or '(default)'!s}; it serves: {names}")
        return cls(client, chosen[0].name, chosen[0].fingerprint)

    async def embed(self, images: list[bytes]) -> list[Outcome]:
        try:
            result = await self._client.embed(images, model=self.model, on_error="skip")
        except APIError as exc:
            if exc.status_code in (401, 403, 404):
                raise FatalError(str(exc)) from exc
            if len(images) > 1 and 400 <= exc.status_code < 500:
                # A refusal of the whole request (more images or bytes than the server takes in one, or
                # one image it rejects outright): halve until the requests fit or the culprit is alone.
                half = len(images) // 2
                first, second = await asyncio.gather(self.embed(images[:half]), self.embed(images[half:]))
                return first + second
            return [Outcome(None, str(exc), self.fingerprint)] * len(images)
        except SimPoolError as exc:  # the service stayed unreachable for the whole retry budget
            return [Outcome(None, str(exc), self.fingerprint)] * len(images)
        failed = {e.index: e.detail for e in result.errors}
        vectors = l2_normalize(result.embeddings)
        return [
            Outcome(None, failed[i], result.fingerprint)
            if i in failed
            else Outcome(vectors[i], None, result.fingerprint)
            for i in range(len(images))
        ]

    async def aclose(self) -> None:
        await self._client.aclose()


def resolve_model_dir(model_dir: Path, model: str | None) -> Path:
    """A model folder itself, or one folder of a repository (by name, or the only one there)."""
    if (model_dir / "manifest.json").is_file():
        return model_dir
    if model:
        folder = model_dir / model
        if not (folder / "manifest.json").is_file():
            raise FatalError(f"{folder}: no manifest.json (is {model!r} a model in {model_dir}?)")
        return folder
    candidates = sorted(p.parent for p in model_dir.glob("*/manifest.json"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FatalError(f"{model_dir}: no model here (expected manifest.json, or NAME/manifest.json)")
    names = ", ".join(c.name for c in candidates)
    raise FatalError(f"{model_dir} holds several models ({names}): choose one with --model")


class LocalBackend:
    """Runs the service's decoding, preprocessing and ONNX Runtime code in this process.

    The decoding limits and options come from the same `SIMPOOL_*` settings the service reads, so
    the same environment gives the same embeddings here as from a server.
    """

    def __init__(self, model_dir: Path, *, model: str | None) -> None:
        from simpool_serve.service.manifest import ManifestError, fingerprint, load_manifest
        from simpool_serve.service.models import open_verified
        from simpool_serve.service.preprocess import ImageError, decode_image
        from simpool_serve.service.settings import Settings

        folder = resolve_model_dir(model_dir, model)
        try:
            self._manifest = load_manifest(folder / "manifest.json")
        except ManifestError as exc:
            raise FatalError(str(exc)) from exc
        settings = Settings()
        self._decode = decode_image
        self._image_error = ImageError
        self._decode_kwargs: dict[str, Any] = {
            "max_pixels": settings.max_image_pixels,
            "draft": settings.jpeg_draft,
        }
        self._max_bytes = settings.max_image_bytes
        # As the service does: the rows written carry the manifest's fingerprint, so the graph must be the
        # one the manifest names, and its outputs the shapes it describes.
        # One runner, one inference at a time (as in the service); decoding runs in parallel beside it.
        try:
            threads = settings.resolved_intra_op_threads()
            self._runner = open_verified(folder / "model.onnx", self._manifest, settings.providers, threads)
        except ValueError as exc:  # not the manifest's graph, or not the shapes it describes
            raise FatalError(str(exc)) from exc
        self._run_lock = threading.Lock()
        self.model = self._manifest.name
        self.fingerprint = fingerprint(self._manifest)

    def _embed_sync(self, images: list[bytes]) -> list[Outcome]:
        pixels: list[np.ndarray] = []
        errors: dict[int, str] = {}
        for i, data in enumerate(images):
            if len(data) > self._max_bytes:
                errors[i] = f"image of {len(data)} bytes exceeds the limit of {self._max_bytes}"
                continue
            try:
                pixels.append(self._decode(data, self._manifest, **self._decode_kwargs))
            except self._image_error as exc:
                errors[i] = str(exc)
        vectors = np.empty((0, 0), np.float32)
        if pixels:
            with self._run_lock:
                vectors = l2_normalize(self._runner.run(np.stack(pixels))["embedding"])
        out: list[Outcome] = []
        it = iter(vectors)
        for i in range(len(images)):
            if i in errors:
                out.append(Outcome(None, errors[i], self.fingerprint))
            else:
                out.append(Outcome(next(it), None, self.fingerprint))
        return out

    async def embed(self, images: list[bytes]) -> list[Outcome]:
        return await asyncio.to_thread(self._embed_sync, images)

    async def aclose(self) -> None:
        return None


def default_url() -> str:
    return os.environ.get("SIMPOOL_URL", "http://127.0.0.1:8000")
