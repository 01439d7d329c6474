"""Retries on 503 through a real loopback server that answers 503 + Retry-After, then forwards."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from pathlib import Path

import pytest

from simpool_serve.client import (
    AsyncSimPoolClient,
    RetryPolicy,
    ServiceUnavailableError,
    SimPoolClient,
    SimPoolConnectionError,
)
from simpool_serve.client.retry import parse_retry_after
from tests.helpers import Server, cosine, free_port
from tests.helpers.loopback_proxy import ProxyScript, loopback_proxy


def test_retries_503_then_succeeds(server: Server, photos: dict[str, Path]) -> None:
    images = [photos["astronaut.jpg"], photos["coffee.jpg"]]
    with SimPoolClient(server.url) as client:
        direct = client.embed(images)
    script = ProxyScript(upstream=server.url, fail_first=2, retry_after="1")
    with loopback_proxy(script) as url, SimPoolClient(url) as client:
        result = client.embed(images)
    assert [c[2] for c in script.calls] == [503, 503, 200]
    assert result.fingerprint == direct.fingerprint
    assert cosine(result.embeddings[1], direct.embeddings[1]) > 0.9999


def test_async_retries_each_split_request(server: Server, photos: dict[str, Path]) -> None:
    images = [photos["astronaut.jpg"], photos["coffee.jpg"], photos["rocket.jpg"]]
    script = ProxyScript(upstream=server.url, fail_first=1, retry_after="0")

    async def go() -> int:
        async with AsyncSimPoolClient(url, max_images_per_request=1) as client:
            return len(await client.embed(images))

    with loopback_proxy(script) as url:
        assert asyncio.run(go()) == 3
    statuses = sorted(c[2] for c in script.calls)
    assert statuses == [200, 200, 200, 503]


def test_gives_up_within_the_retry_budget() -> None:
    script = ProxyScript(upstream=None, retry_after="1")
    budget = RetryPolicy(total_timeout=1.5)
    with (
        loopback_proxy(script) as url,
        SimPoolClient(url, retry=budget) as client,
        pytest.raises(ServiceUnavailableError) as e,
    ):
        client.embed([b"x"])
    # Waits of 1 s fit once into 1.5 s: two attempts, then the server's own answer surfaces.
    assert len(script.calls) == 2
    assert e.value.status_code == 503 and "queue full" in e.value.detail
    assert e.value.headers.get("retry-after") == "1"


def test_nothing_listening_fails_at_once_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    started = time.monotonic()
    with SimPoolClient(url) as client:  # the default retry budget (60 s) is not spent on a wrong URL
        with pytest.raises(SimPoolConnectionError, match="is simpool-serve running there") as e:
            client.models()
        assert not client.healthy()
    with pytest.raises(SimPoolConnectionError, match=r"\(connection refused\)"):
        asyncio.run(AsyncSimPoolClient(url).models())
    assert url in str(e.value) and time.monotonic() - started < 10


def test_a_connect_timeout_is_retried_and_said_while_waiting(caplog: pytest.LogCaptureFixture) -> None:
    # A listening socket whose accept queue is full: the kernel drops further connection attempts, as a
    # firewalled or overloaded host does, so the client's connect times out.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        url = f"http://127.0.0.1:{full.getsockname()[1]}"
        with socket.create_connection(full.getsockname()):
            policy = RetryPolicy(total_timeout=1.5)
            with (
                SimPoolClient(url, connect_timeout=0.2, retry=policy) as client,
                caplog.at_level("WARNING"),
                pytest.raises(SimPoolConnectionError, match="no connection within the connect timeout"),
            ):
                client.models()
    waits = [r.getMessage() for r in caplog.records if r.name == "simpool_serve.client"]
    assert waits and all("does not accept the connection within the connect timeout" in w for w in waits)
    assert url in waits[0] and "trying again in" in waits[0]


def test_a_refused_connection_after_an_answer_is_a_restart_worth_waiting_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = ProxyScript(upstream=None, retry_after="5")  # longer than the budget: one 503, at once
    with loopback_proxy(script) as url:
        client = SimPoolClient(url, retry=RetryPolicy(total_timeout=1.0))
        with pytest.raises(ServiceUnavailableError):
            client.models()  # answered (503): the service exists
    with (
        client,
        caplog.at_level("WARNING"),
        pytest.raises(SimPoolConnectionError, match="connection refused"),
    ):
        client.models()  # now refused: retried for the budget, out loud
    waits = [
        r.getMessage() for r in caplog.records if "refuses the connection (restarting?)" in r.getMessage()
    ]
    assert len(waits) >= 2


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True)) == 0.0  # in the past: now
