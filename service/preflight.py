"""What `simpool-serve` checks before it serves: each mistake becomes one sentence naming what to change.

Everything here runs before uvicorn starts and before any model loads, so a wrong folder, a broken
manifest, an unknown default model, a missing provider or a busy port is reported in a second,
not after a minute of loading (or as a traceback from inside the server's lifespan).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from pydantic import ValidationError

from simpool_serve.service import tracing
from simpool_serve.service.engine.models import ModelFolder, default_model, discover, folder_names
from simpool_serve.service.engine.runner import ProviderError, choose_providers
from simpool_serve.service.key_file import KeyFileError, read_key_file
from simpool_serve.service.settings import Settings
from simpool_serve.spec import Manifest, ManifestError

# The listening socket's queue: as uvicorn's default, so a burst at start-up waits instead of failing.
BACKLOG = 2048
_ALL_INTERFACES = {"0.0.0.0", "::", ""}


class ConfigError(Exception):
    """A reason the server cannot start, phrased for the person who started it."""


def settings_error(exc: ValidationError) -> str:
    """A pydantic error on the settings as one line per field: the flag, its variable, what is wrong."""
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err.get("loc") else "settings"
        flagged = {"model_dir", "host", "port", "grpc_port", "default_model"}
        flag = f"--{name.replace('_', '-')}" if name in flagged else ""
        where = f"{flag} / SIMPOOL_{name.upper()}" if flag else f"SIMPOOL_{name.upper()}"
        given = "" if name == "api_key" else f" (got {err.get('input')!r})"
        parts.append(f"{where}: {err.get('msg', 'invalid')}{given}")
    return "invalid setting: " + "; ".join(parts)


def check_repository(
    model_dir: Path, control: str = "none", load_models: list[str] | None = None
) -> dict[str, ModelFolder]:
    """The models the server will load at start (manifests read, nothing loaded); ConfigError if it
    cannot start: under `none` a broken or empty repository, under `explicit` a named model that is
    missing or broken. Under `poll` an empty repository serves nothing until a folder appears, and a
    broken folder is reported by the rescan."""
    _check_folder(model_dir)
    if control == "poll":
        return _readable(model_dir)
    if control == "explicit":
        return _named(model_dir, load_models or [])
    return _discover(model_dir)


def _readable(model_dir: Path) -> dict[str, ModelFolder]:
    found = {}
    for name in folder_names(model_dir):
        try:
            found[name] = ModelFolder.read(model_dir / name)
        except ManifestError:
            continue  # the rescan logs it, and the repository index shows why
    return found


def _named(model_dir: Path, names: list[str]) -> dict[str, ModelFolder]:
    present = folder_names(model_dir)
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(
            f"SIMPOOL_LOAD_MODELS names {missing}, not model folders in {model_dir} (its models: "
            f"{', '.join(present) or 'none'}); name folders that hold manifest.json and model.onnx"
        )
    try:
        return {name: ModelFolder.read(model_dir / name) for name in names}
    except ManifestError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(
            f"{message}; re-export that model (simpool-export) or leave it out of SIMPOOL_LOAD_MODELS"
        ) from exc


def _check_folder(model_dir: Path) -> None:
    shown = str(model_dir)
    if not model_dir.exists():
        raise ConfigError(
            f"--model-dir {shown} does not exist; point --model-dir (SIMPOOL_MODEL_DIR) at a folder "
            "with one NAME/model.onnx + NAME/manifest.json per model (`make models` exports the defaults)"
        )
    if not model_dir.is_dir():
        raise ConfigError(f"--model-dir {shown} is a file, not a folder of models")
    if (model_dir / "manifest.json").is_file():
        raise ConfigError(
            f"--model-dir {shown} is a single model's folder; pass the repository that holds it: "
            f"--model-dir {model_dir.resolve().parent}"
        )


def _discover(model_dir: Path) -> dict[str, ModelFolder]:
    shown = str(model_dir)
    try:
        models = discover(model_dir)
    except ManifestError as exc:
        message = " ".join(str(exc).split())
        if message.startswith("no model folder"):
            raise ConfigError(
                f"{message}; export one there (simpool-export --out {shown}/NAME ...) "
                "or point --model-dir at your model repository"
            ) from exc
        hint = "re-export that model (simpool-export) or move its folder away"
        raise ConfigError(f"{message}; {hint}") from exc
    return models


def check_default_model(
    models: dict[str, ModelFolder], wanted: str | None, control: str = "none", model_dir: Path | None = None
) -> str | None:
    """The default model's name. Under `explicit` it must be a folder of the repository (loaded now or
    later); under `poll` it may be one still to come."""
    if control != "none":
        if wanted is None or control == "poll" or model_dir is None or wanted in folder_names(model_dir):
            return wanted or (sorted(models)[0] if models else None)
        raise ConfigError(
            f"--default-model {wanted} is not a model folder in {model_dir}; set --default-model "
            f"(SIMPOOL_DEFAULT_MODEL) to one of: {', '.join(folder_names(model_dir))}"
        )
    try:
        return default_model(models, wanted)
    except ManifestError as exc:
        raise ConfigError(
            f"--default-model {wanted} is not in the repository; set --default-model "
            f"(SIMPOOL_DEFAULT_MODEL) to one of: {', '.join(sorted(models))}"
        ) from exc


def check_providers(requested: list[str] | None) -> list[str]:
    try:
        return choose_providers(requested)
    except ProviderError as exc:
        raise ConfigError(
            f"{exc}; set SIMPOOL_PROVIDERS to some of those, or unset it (CUDA when available, else CPU)"
        ) from exc


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """The listening socket, bound and listening now (uvicorn serves on it once it starts).

    Binding first makes a busy port a start-up error before any model loads; listening at once
    means a client that connects during start-up waits in the queue instead of being refused.
    """
    # As uvicorn binds: IPv6 for an address with a colon, else IPv4 (so "localhost" is 127.0.0.1).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except socket.gaierror as exc:
        sock.close()
        raise ConfigError(
            f"--host {host} is not an address of this machine ({exc.strerror}); "
            "use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
        ) from exc
    except OSError as exc:
        sock.close()
        raise _bind_error(exc, host, port, "--port", "SIMPOOL_PORT") from exc
    return sock


def check_api_keys_file(path: Path | None) -> None:
    """That the keys file, when one is set, can be read and holds a key (later, a bad file keeps the
    keys loaded before; at start there are none to keep)."""
    if path is None:
        return
    try:
        read_key_file(path)
    except KeyFileError as exc:
        raise ConfigError(f"{exc}; or unset SIMPOOL_API_KEYS_FILE") from exc


def check_tracing() -> None:
    """An `OTEL_*` exporter or protocol this service cannot use."""
    try:
        tracing.check_env()
    except tracing.TracingError as exc:
        raise ConfigError(str(exc)) from exc


def _bind_error(exc: OSError, host: str, port: int, flag: str, variable: str) -> ConfigError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"cannot listen on {where}: the port is already in use (another simpool-serve?); "
            f"stop that process or choose another {flag} ({variable})"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"cannot listen on {where}: permission denied (ports below 1024 need privileges); "
            f"choose a {flag} above 1023"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"cannot listen on {where}: {host} is not an address of this machine; "
            "use --host 127.0.0.1 or --host 0.0.0.0"
        )
    return ConfigError(f"cannot listen on {where}: {exc.strerror or exc}")


def check_grpc_port(host: str, port: int) -> None:
    """That the gRPC port is free now (the gRPC server binds it once the app starts); 0 is off.

    Bound as gRPC binds (SO_REUSEADDR, never SO_REUSEPORT), so a port another server listens on is
    refused here, in one line, before any model loads.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            error = _bind_error(exc, host, port, "--grpc-port", "SIMPOOL_GRPC_PORT; 0 turns gRPC off")
            raise ConfigError(str(error).replace("cannot listen on", "cannot listen for gRPC on")) from exc


def untrained(models: dict[str, ModelFolder]) -> list[str]:
    """Names of the models exported with random weights (their answers mean nothing)."""
    return sorted(name for name, m in models.items() if _is_random(m.manifest))


def _is_random(manifest: Manifest) -> bool:
    return (manifest.weights or "").lower() == "random"


def exposed(settings: Settings) -> bool:
    """Listening on every interface with no API key: anyone who reaches the port may call the API."""
    keyed = settings.api_key is not None or settings.api_keys_file is not None
    return settings.host in _ALL_INTERFACES and not keyed
