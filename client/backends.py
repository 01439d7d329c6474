"""Where `simpool-embed` gets embeddings from: a running service, or the service's engine in-process.

Both answer per image (an embedding or an error), so one bad file never costs its batch-mates.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from simpool_serve.client.async_client import AsyncSimPoolClient
from simpool_serve.client.errors import APIError, SimPoolConnectionError, SimPoolError
from simpool_serve.client.retry import RetryPolicy
from simpool_serve.spec import EMBEDDING

if TYPE_CHECKING:
    from simpool_serve.service.engine import Engine
    from simpool_serve.service.engine.descriptor import Descriptor


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


def _probe_image() -> np.ndarray:
    """A 256×256 colour ramp: large enough for any scale the service takes (1/8 still leaves 32 px)."""
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    return np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1, None]), axis=-1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


class HttpBackend:
    """Sends batches to simpool-serve; `concurrency` requests in flight at most."""

    def __init__(
        self, client: AsyncSimPoolClient, model: str, fingerprint: str, descriptor: Mapping[str, Any]
    ) -> None:
        self._client = client
        self._descriptor = dict(descriptor)
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
        descriptor: Mapping[str, Any] | None = None,
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
            raise FatalError(f"cannot list the models of {url}: {exc}{_base_url_hint(url, exc)}") from exc
        chosen = [m for m in infos if (m.name == model if model else m.default)]
        if not chosen and not model and len(infos) == 1:
            chosen = infos
        if not chosen:
            await client.aclose()
            names = ", ".join(m.name for m in infos) or "none"
            raise FatalError(f"{url} serves no model {model or '(default)'!s}; it serves: {names}")
        fields = dict(descriptor or {})
        fingerprint = chosen[0].fingerprint
        if fields:  # a descriptor's fingerprint is the service's to say: ask it with one small image
            try:
                probe = await client.embed([_probe_image()], model=chosen[0].name, **fields)
            except (APIError, SimPoolError) as exc:
                await client.aclose()
                raise FatalError(f"{url} refuses the descriptor {fields}: {exc}") from exc
            fingerprint = probe.fingerprint
        return cls(client, chosen[0].name, fingerprint, fields)

    async def embed(self, images: list[bytes]) -> list[Outcome]:
        try:
            result = await self._client.embed(images, model=self.model, on_error="skip", **self._descriptor)
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
    """Runs the service's engine in this process: the same decoding, limits, batcher and graph checks.

    Its configuration (`EngineConfig`) comes from the same `SIMPOOL_*` environment the service reads,
    so the same environment gives the same embeddings here as from a server.
    """

    def __init__(self, engine: Engine, model: str, descriptor: Descriptor) -> None:
        self._engine = engine
        self._model = engine.model(engine.default)
        self._descriptor = descriptor
        self.model = model
        # Of the descriptor asked for: the graph's own for the default crop view.
        self.fingerprint = engine.resolve(self._model, descriptor).fingerprint

    @classmethod
    async def open(
        cls, model_dir: Path, *, model: str | None, descriptor: Mapping[str, Any] | None = None
    ) -> LocalBackend:
        """`descriptor`: the retrieval descriptor's fields (view, size, scales, whiten, dimensions)."""
        from pydantic import ValidationError

        from simpool_serve.service.engine import Engine, EngineConfig, EngineError, ModelFolder
        from simpool_serve.service.engine.descriptor import Descriptor
        from simpool_serve.service.metrics import Metrics
        from simpool_serve.spec import ManifestError

        folder_path = resolve_model_dir(model_dir, model)
        try:
            folder = ModelFolder.read(folder_path)
        except ManifestError as exc:
            raise FatalError(str(exc)) from exc
        config = EngineConfig()
        engine = Engine(config, Metrics(config.max_batch_size or 32), {folder.name: folder}, folder.name)
        # As the service does: the rows written carry the manifest's fingerprint, so the graph must be the
        # one the manifest names, and its outputs the shapes it describes.
        try:
            await engine.load()
        except (ValueError, RuntimeError) as exc:  # not the manifest's graph, or not the shapes it describes
            await engine.close()
            raise FatalError(str(exc)) from exc
        try:
            return cls(engine, folder.manifest.name, Descriptor.from_parameters(descriptor or {}))
        except (ValidationError, EngineError) as exc:  # a descriptor this model cannot give
            await engine.close()
            raise FatalError(exc.detail if isinstance(exc, EngineError) else str(exc)) from exc

    async def embed(self, images: list[bytes]) -> list[Outcome]:
        # One engine call takes at most a request's worth of images, as one HTTP request would.
        step = self._engine.limits.max_images
        chunks = [images[i : i + step] for i in range(0, len(images), step)]
        parts = await asyncio.gather(*(self._embed(chunk) for chunk in chunks))
        return [outcome for part in parts for outcome in part]

    async def _embed(self, images: list[bytes]) -> list[Outcome]:
        from simpool_serve.service.engine import Call, EngineError

        try:
            call = Call(images=list(images), on_error="skip", descriptor=self._descriptor)
            answer = await self._engine.run(self._model, call, deadline=self._engine.deadline())
        except EngineError as exc:  # the whole call refused (deadline, queue full): every image failed
            return [Outcome(None, exc.detail, self.fingerprint)] * len(images)
        failed = {f.index: f.detail for f in answer.failures}
        return [
            Outcome(None, failed[i], self.fingerprint)
            if out is None
            else Outcome(l2_normalize(out[EMBEDDING]), None, self.fingerprint)
            for i, out in enumerate(answer.outputs)
        ]

    async def aclose(self) -> None:
        await self._engine.close()


def _base_url_hint(url: str, exc: Exception) -> str:
    """A 404 on /models usually means an endpoint was given where the service's base URL belongs."""
    if not (isinstance(exc, APIError) and exc.status_code == 404):
        return ""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    base = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    for endpoint in ("/embed", "/classify", "/attention", "/models", "/v1/embeddings", "/ui"):
        if path.endswith(endpoint):
            base = urlunsplit((parts.scheme, parts.netloc, path.removesuffix(endpoint), "", ""))
            break
    return f"; --url takes the service's base URL (such as {base}), not an endpoint"


def default_url() -> str:
    return os.environ.get("SIMPOOL_URL", "http://127.0.0.1:8000")
