"""When to try a request again, and how long to wait: shared by the sync and async clients.

Only 503 (the service's "queue full / not ready yet") and a dropped or refused
connection are retried: everything else is either the caller's mistake or work the
service may still be doing, and repeating it would only add load. A refused connection
is retried only once the client has reached the service (a restart): before that it
means nothing listens at the URL, which waiting would not change.
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import time
from dataclasses import dataclass

import httpx

from simpool_serve.client.errors import SimPoolConnectionError, error_for

log = logging.getLogger("simpool_serve.client")

# The default seconds to wait for a TCP connection: a server that exists accepts in milliseconds, even
# while busy (the kernel queues connections); waiting longer only delays the report of a wrong address.
DEFAULT_CONNECT_TIMEOUT = 5.0

# Transport failures that mean "the request never reached a worker": safe to repeat.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """`total_timeout` bounds the time one request may spend waiting to be retried (not its own run time)."""

    total_timeout: float = 60.0
    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    min_wait: float = 0.05

    def wait(self, attempt: int, elapsed: float, retry_after: float | None) -> float | None:
        """Seconds to sleep before attempt `attempt + 1`, or None when the budget would be exceeded."""
        if retry_after is None:
            base = min(self.max_backoff, self.initial_backoff * 2**attempt)
            retry_after = base * (0.5 + random.random() / 2)  # jitter: concurrent callers spread out
        wait = max(self.min_wait, retry_after)
        if elapsed + wait > self.total_timeout:
            return None
        return wait


NO_RETRY = RetryPolicy(total_timeout=0.0)


def _reason(exc: Exception) -> str:
    """What went wrong, in words: the cause under httpx's and anyio's wrappers ("All connection
    attempts failed" hides a refused connection)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "no connection within the connect timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"unknown host: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def unreachable(url: str, exc: Exception) -> SimPoolConnectionError:
    """The error for a URL where nothing accepts connections, saying what to check."""
    reason = _reason(exc)
    return SimPoolConnectionError(
        f"cannot connect to {url} ({reason}): is simpool-serve running there? "
        "Start it (simpool-serve --model-dir DIR), or give the URL it listens on"
    )


class RetryState:
    """Tracks one request's attempts; each step says how long to sleep, None (done), or raises.

    `reached`: whether the client has had an answer from the service before (so a refused connection
    is a restart worth waiting for, not a wrong URL).
    """

    def __init__(self, policy: RetryPolicy, url: str = "the service", reached: bool = True) -> None:
        self.policy = policy
        self.url = url
        self.reached = reached
        self.attempt = 0
        self.started = time.monotonic()

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def after_response(self, response: httpx.Response) -> float | None:
        """None when `response` is the final 2xx answer; a wait for a retryable 503; raises otherwise."""
        self.reached = True
        if response.is_success:
            return None
        headers = dict(response.headers)
        if response.status_code == 503:
            wait = self.policy.wait(
                self.attempt, self._elapsed(), parse_retry_after(response.headers.get("retry-after"))
            )
            if wait is not None:
                self.attempt += 1
                return wait
        raise error_for(response.status_code, response.content, headers)

    def after_exception(self, exc: Exception) -> float:
        """The wait before retrying after a transport error; SimPoolConnectionError when out of budget."""
        refused = isinstance(exc, httpx.ConnectError)
        if refused and not self.reached:
            raise unreachable(self.url, exc) from exc
        if isinstance(exc, RETRYABLE_TRANSPORT_ERRORS):
            wait = self.policy.wait(self.attempt, self._elapsed(), None)
            if wait is not None:
                self.attempt += 1
                self._say_waiting(exc, wait)
                return wait
        if refused or isinstance(exc, httpx.ConnectTimeout):
            raise unreachable(self.url, exc) from exc
        raise SimPoolConnectionError(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    def _say_waiting(self, exc: Exception, wait: float) -> None:
        """A wait on the connection is said out loud: a silent minute looks like a hang."""
        left = max(0.0, self.policy.total_timeout - self._elapsed())
        if isinstance(exc, httpx.ConnectTimeout):
            why = "does not accept the connection within the connect timeout"
        elif isinstance(exc, httpx.ConnectError):
            why = "refuses the connection (restarting?)"
        else:
            return  # a dropped keep-alive connection: routine, retried at once
        log.warning(f"{self.url} {why}; trying again in {wait:.1f} s, for up to {left:.0f} s more")
