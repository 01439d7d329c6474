"""API key: `Authorization: Bearer <SIMPOOL_API_KEY>`, compared in constant time.

Every door applies it the same way: `dependencies=[Depends(require_key)]` on its router (the probes
stay open).
"""

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from simpool_serve.service.refusals import unauthenticated
from simpool_serve.service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <SIMPOOL_API_KEY>` when set.")


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def require_key(
    request: Request,
    settings: Annotated[Settings, Depends(settings_of)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuses (401) a request without the key; lets every request through when no key is set."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = creds.credentials.encode() if creds is not None else b""
    if creds is None or not hmac.compare_digest(given, expected):
        what = "missing API key" if creds is None else "wrong API key"
        sent = request.headers.get("authorization", "").strip()
        if creds is None and sent and " " not in sent:  # `Authorization: <key>`, no scheme before it
            what = "the Authorization header lacks the `Bearer` scheme"
        detail = f"{what}: send it as the header `Authorization: Bearer <key>`"
        raise unauthenticated(detail)
