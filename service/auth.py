"""API keys: `Authorization: Bearer <key>`, checked against the app's `KeyRing` in constant time.

Every door applies it the same way: `dependencies=[Depends(require_key)]` on its router (the probes
stay open). The name of the key a request was let in with goes to its count and log line (`label_key`).
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from simpool_serve.service.keys import KeyRing
from simpool_serve.service.observe import label_key
from simpool_serve.service.refusals import unauthenticated
from simpool_serve.service.settings import Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <key>` when SIMPOOL_API_KEY or SIMPOOL_API_KEYS_FILE is set.",
)


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def keys_of(request: Request) -> KeyRing:
    """The keys accepted now (the lifespan builds the ring; a keys file's rotation updates it)."""
    keys: KeyRing = request.app.state.keys
    return keys


async def require_key(
    request: Request,
    keys: Annotated[KeyRing, Depends(keys_of)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuses (401) a request without an accepted key; lets every request through when none is set."""
    if not keys.required:
        return
    name = keys.name_of(creds.credentials) if creds is not None else None
    if name is None:
        what = "missing API key" if creds is None else "wrong API key"
        sent = request.headers.get("authorization", "").strip()
        if creds is None and sent and " " not in sent:  # `Authorization: <key>`, no scheme before it
            what = "the Authorization header lacks the `Bearer` scheme"
        detail = f"{what}: send it as the header `Authorization: Bearer <key>`"
        raise unauthenticated(detail)
    label_key(request, name)
