"""Retries on 503 through a real loopback server that answers 503 + Retry-After, then forwards."""

from __future__ import annotations

import asyncio
import email.utils
from pathlib import Path

import pytest
from conftest import Server, cosine, free_port
from loopback_proxy import ProxyScript, loopback_proxy

from simpool_serve.client import (
    AsyncSimPoolClient,
    RetryPolicy,
    ServiceUnavailableError,
    SimPoolClient,
    SimPoolConnectionError,
)
from simpool_serve.client.retry import parse_retry_after


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


def test_unreachable_service_raises_connection_error() -> None:
    port = free_port()  # nothing listens there: connections are refused
    with SimPoolClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(total_timeout=0.5)) as client:
        with pytest.raises(SimPoolConnectionError):
            client.models()
        assert not client.healthy()


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True)) == 0.0  # in the past: now
