"""The HTTP-free engine every door calls: models, thread plan, decode pool, batchers (see engine.py)."""

from simpool_serve.service.engine.engine import Answer, Disconnected, Engine, ImageFailure, OnError
from simpool_serve.service.engine.errors import EngineError, Kind, unavailable
from simpool_serve.service.engine.models import LoadedModel, ModelFolder
from simpool_serve.service.engine.plan import ThreadPlan

__all__ = [
    "Answer",
    "Disconnected",
    "Engine",
    "EngineError",
    "ImageFailure",
    "Kind",
    "LoadedModel",
    "ModelFolder",
    "OnError",
    "ThreadPlan",
    "unavailable",
]
