"""API key: `Authorization: Bearer <SIMPOOL_API_KEY>`, compared in constant time."""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from simpool_serve.service.errors import ServiceError


def bearer_auth(key: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that refuses (401) requests without the key; a no-op when `key` is None."""
    api_key = key.encode() if key else None
    bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <SIMPOOL_API_KEY>` when set.")

    async def require_key(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if api_key is None:
            return
        given = creds.credentials.encode() if creds is not None else b""
        if creds is None or not hmac.compare_digest(given, api_key):
            what = "missing API key" if creds is None else "wrong API key"
            raise ServiceError(
                401,
                f"{what}: send it as the header `Authorization: Bearer <key>`",
                "unauthorized",
                {"WWW-Authenticate": "Bearer"},
            )

    return require_key
