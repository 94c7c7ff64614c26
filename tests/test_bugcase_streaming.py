"""bug-cases.md rows 27-30: no total timeout but a read-idle one, a client that goes away
cancels the upstream exchange, pooled connections the upstream closed are retried only when
that is safe. Row 28 (memory) is in test_bugcase_memory.py."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from benchmarks import streaming
from proxy import simulator
from proxy.app import SERVICES
from tests.bugcase_support import (
    captured_logs,
    events_named,
    proxy_to,
    raw_upstream,
    request_bytes,
    until,
)
from tests.conftest import ProxyFactory, SimulatorFactory
from tests.rawhttp import RawClient, RawRequest, chunk, response_bytes

KIB = 1024
MB = 1_000_000


def _chunks_every(interval: float, count: int, stall_after: int = 0,
                  stall: float = 0.0) -> Any:
    """A responder streaming `count` chunks of 1 KiB, `interval` apart (with one stall)."""

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", ("Transfer-Encoding: chunked",)))
        for i in range(count):
            if stall and i == stall_after:
                await asyncio.sleep(stall)
            writer.write(chunk(bytes([65 + i]) * KIB))
            await writer.drain()
            await asyncio.sleep(interval)
        writer.write(chunk(b""))

    return respond


async def test_row27_long_stream_not_cut_at_300s(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A slow but healthy stream is never cut by a total deadline: the proxy's session has no
    total timeout, and 16 x 1 KiB chunks 0.25 s apart (4 s in all, 8x the 0.5 s read-idle
    timeout) all arrive. Scaled from 20 s apart / 320 s against a 300 s total."""
    async with raw_upstream(_chunks_every(0.25, 16)) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url, read_timeout=0.5)
        assert proxy.app is not None
        timeout = proxy.app[SERVICES].session.timeout
        assert (timeout.total, timeout.sock_read) == (None, 0.5)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/slow"))
            reply = await client.response(limit_s=10)
    assert reply.complete
    assert len(reply.body) == 16 * KIB
    assert reply.body[-KIB:] == b"P" * KIB


async def test_row27_idle_upstream_is_cut_after_the_read_timeout(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """An upstream silent for 0.75 s mid-stream with a 0.5 s read-idle timeout: the client
    stream is aborted about 0.5 s after the last byte and a WARNING names the read timeout.
    Scaled from a 45 s stall against a 30 s timeout."""
    async with raw_upstream(_chunks_every(0.05, 4, stall_after=2, stall=0.75)) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url, read_timeout=0.5)
        with captured_logs() as events:
            async with await RawClient.connect(proxy.port or 0) as client:
                await client.send(request_bytes("GET", "/v1/stalls"))
                reply = await client.response(limit_s=5)
            loop_now = asyncio.get_running_loop().time()
    assert not reply.complete
    assert reply.body == b"A" * KIB + b"B" * KIB
    idle = loop_now - reply.chunk_times[-1]
    assert 0.4 < idle < 0.75
    (warning,) = events_named(events, "upstream_read_timeout")
    assert (warning["log_level"], warning["path"]) == ("warning", "/v1/stalls")


def _endless(first: int, then_idle: bool) -> Any:
    """A 100 MB answer: streamed as fast as the reader takes it, or `first` bytes and then
    silence (the connection stays open until the proxy closes it)."""

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", (f"Content-Length: {100 * MB}",)))
        block = b"z" * (64 * KIB)
        for _ in range(0, first if then_idle else 100 * MB, len(block)):
            writer.write(block)
            await writer.drain()

    return respond


@pytest.mark.parametrize("idle", [False, True], ids=["streaming", "idle"])
async def test_row29_client_disconnect_cancels_the_upstream(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
        caplog: pytest.LogCaptureFixture, idle: bool) -> None:
    """A client that resets after 1 MB of a 100 MB answer gets the upstream connection closed
    within 2 s, whether the upstream is streaming or idle; one INFO line, no traceback, no
    'Unclosed' report, and the next request works."""
    async with raw_upstream(_endless(MB + 64 * KIB, idle)) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        with captured_logs() as events, caplog.at_level(logging.DEBUG):
            client = await RawClient.connect(proxy.port or 0)
            await client.send(request_bytes("GET", "/v1/big"))
            await client.reader.readuntil(b"\r\n\r\n")
            await client.reader.readexactly(MB)
            client.reset()
            reset_at = asyncio.get_running_loop().time()
            await until(lambda: upstream.open_connections == 0, 2.0)
            assert upstream.closed_at[-1] - reset_at < 2.0
            await _next_request_works(proxy, upstream)
    assert [e["log_level"] for e in events_named(events, "client_disconnected")] == ["info"]
    assert not [e for e in events if e["log_level"] in ("warning", "error")]
    assert not [r for r in caplog.records if r.exc_info or "Unclosed" in r.getMessage()]



async def _next_request_works(proxy: TestServer, upstream: Any) -> None:
    upstream.respond = _ok
    async with await RawClient.connect(proxy.port or 0) as client:
        await client.send(request_bytes("GET", "/v1/next"))
        assert (await client.response()).status == 200


async def _ok(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response_bytes("200 OK", ("Content-Length: 2",), b"ok"))
    await writer.drain()


async def test_row30_pooled_connection_closed_by_upstream_is_not_reused(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """The upstream closes each keep-alive connection after answering; 50 ms later a GET and
    then a POST go to fresh connections and succeed; the POST arrives once."""

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        if request.target == "/v1/a":
            writer.write(response_bytes("204 No Content", ("Connection: keep-alive",)))
        else:
            await _ok(request, writer)
        await writer.drain()
        writer.close()

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        statuses = await _a_b_post(proxy)
    assert statuses == [204, 200, 200]
    assert [r.target for r in upstream.requests].count("/v1/c") == 1


async def test_row30_reused_connection_dropped_on_arrival_retries_only_idempotent(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    """The upstream drops a kept-alive connection just as the next request arrives on it: the
    GET is retried once on a fresh connection (200); the POST is never sent twice (502)."""
    seen_on: dict[int, int] = {}

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        seen_on[id(writer)] = seen_on.get(id(writer), 0) + 1
        if seen_on[id(writer)] > 1:
            writer.transport.abort()  # read it, answer nothing, reset
            return
        if request.target == "/v1/a":
            writer.write(response_bytes("204 No Content"))
        else:
            await _ok(request, writer)

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        with caplog.at_level(logging.DEBUG):
            statuses = await _a_b_post(proxy)
    targets = [r.target for r in upstream.requests]
    assert statuses == [204, 200, 502]
    assert targets.count("/v1/b") == 2
    assert targets.count("/v1/c") == 1
    assert not [r for r in caplog.records if r.exc_info]


async def _a_b_post(proxy: TestServer) -> list[int]:
    statuses = []
    async with await RawClient.connect(proxy.port or 0) as client:
        for method, target, body in (("GET", "/v1/a", b""), ("GET", "/v1/b", b""),
                                     ("POST", "/v1/c", b'{"n": 123}')):
            extra = (f"Content-Length: {len(body)}", "Content-Type: application/json") \
                if body else ()
            await client.send(request_bytes(method, target, *extra, body=body))
            reply = await client.response()
            statuses.append(reply.status)
            if reply.status == 502:
                assert json.loads(reply.body)["error"]["code"] == "upstream_error"
            await asyncio.sleep(0.05)
    return statuses


async def test_row29_real_server_cancels_on_disconnect() -> None:
    """The same idle-upstream disconnect against `python -m proxy serve` (the test server
    always cancels handlers, the production runner only because the app asks it to)."""
    async with raw_upstream(_endless(MB, then_idle=True)) as upstream, \
            streaming.served(simulator.create_app(simulator.SimulatorOptions())) as sim, \
            streaming.proxy_process(upstream.url, f"{sim}/api/v2/identity/auth") as (base, _):
        client = await RawClient.connect(int(base.rsplit(":", 1)[1]))
        await client.send(request_bytes("GET", "/v1/big"))
        await client.reader.readuntil(b"\r\n\r\n")
        await client.reader.readexactly(MB)
        client.reset()
        await until(lambda: upstream.open_connections == 0, 2.0)
