"""The one settings object of the service: environment variables `SIMPOOL_*`, overridden by CLI flags.

Read once, by whoever builds the app (the CLI or a test), never at import time. `Settings` is the
engine's configuration (`EngineConfig`: repository, batching, limits, threads, providers) plus what
only a server has (address, API keys, logs, connections); the engine is handed `engine_config()` and
never sees the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from simpool_serve.service.engine.config import EngineConfig, available_cores

__all__ = ["Settings", "available_cores"]


class Settings(EngineConfig):
    """Every knob of `simpool-serve`; each is also the environment variable `SIMPOOL_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SIMPOOL_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="The gRPC door (Open Inference Protocol, grpc.health.v1) on `host`; 0 turns it off.",
    )

    # Access and logs.
    api_key: SecretStr | None = Field(
        None, description="When set, every API call needs `Authorization: Bearer <key>`."
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of API keys, one `name:key` (or `key`) per line, re-read within 2 s of a "
        "change; with it, every API call needs one of its keys (or `api_key`).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = Field(60.0, gt=0, description="Longest a SIGTERM waits for accepted requests.")

    # Connections (uvicorn's): idle ones cost a file descriptor and little else, so they are bounded by
    # time rather than count; a slowly sent body is bounded by `request_timeout_s`.
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this many seconds."
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Open connections (idle ones included) beyond which requests get 503; 0 = no limit "
        "(the file-descriptor limit, which the server raises to its hard maximum at start).",
    )
    backlog: int = Field(2048, ge=1, description="Connections the kernel queues before they are accepted.")

    @field_validator("api_key", "api_keys_file", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def engine_config(self) -> EngineConfig:
        """The engine's part of these settings, as the engine's own (frozen) type."""
        fields = {name: getattr(self, name) for name in EngineConfig.model_fields}
        return EngineConfig.model_construct(**fields)
