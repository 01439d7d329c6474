"""The HTTP-free engine every door calls: models, thread plan, decode pool, batchers (see engine.py)."""

from simpool_serve.service.engine.config import EngineConfig
from simpool_serve.service.engine.engine import (
    Answer,
    Call,
    Disconnected,
    Engine,
    ImageFailure,
    OnError,
)
from simpool_serve.service.engine.errors import EngineError, Kind, not_ready, overloaded
from simpool_serve.service.engine.limits import Limits
from simpool_serve.service.engine.models import LoadedModel, ModelFolder
from simpool_serve.service.engine.plan import ThreadPlan
from simpool_serve.service.engine.repository import RepositoryEntry

__all__ = [
    "Answer",
    "Call",
    "Disconnected",
    "Engine",
    "EngineConfig",
    "EngineError",
    "ImageFailure",
    "Kind",
    "Limits",
    "LoadedModel",
    "ModelFolder",
    "OnError",
    "RepositoryEntry",
    "ThreadPlan",
    "not_ready",
    "overloaded",
]
