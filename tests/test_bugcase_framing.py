"""bug-cases.md rows 1-6: Content-Encoding passes through untouched and every response has
exactly one framing header; an upstream that breaks off never looks like a complete answer."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from tests.bugcase_support import captured_logs, events_named, proxy_to, raw_upstream, request_bytes
from tests.conftest import ProxyFactory, SimulatorFactory
from tests.rawhttp import RawClient, RawRequest, RawResponse, chunk, response_bytes

J = json.dumps({"vms": [{"id": i, "name": f"vm-{i}"} for i in range(20)]}).encode()


async def _get(port: int, target: str, *headers: str) -> tuple[int, RawClient]:
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", target, *headers))
    return port, client


async def test_row01_gzip_passes_through(start_simulator: SimulatorFactory,
                                          start_proxy: ProxyFactory) -> None:
    """A gzip body reaches the client compressed, with the upstream's CE and Content-Length."""
    g = gzip.compress(b"A" * 1000)

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", (
            "Content-Type: application/octet-stream", "Content-Encoding: gzip",
            f"Content-Length: {len(g)}"), g))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        _, client = await _get(proxy.port or 0, "/v1/blob", "Accept-Encoding: gzip")
        async with client:
            reply = await client.response()
    assert reply.status == 200
    assert reply.body == g
    assert reply.headers("Content-Encoding") == ["gzip"]
    assert reply.framing == [f"Content-Length: {len(g)}"]
    assert upstream.requests[0].headers("Accept-Encoding") == ["gzip"]


def _negotiating(request: RawRequest) -> bytes:
    """Like a real server: gzip only when the client asked for it."""
    if "gzip" in ",".join(request.headers("Accept-Encoding")):
        body = gzip.compress(J)
        return response_bytes("200 OK", ("Content-Type: application/json",
                                         "Content-Encoding: gzip",
                                         f"Content-Length: {len(body)}"), body)
    return response_bytes("200 OK", ("Content-Type: application/json",
                                     f"Content-Length: {len(J)}"), J)


async def test_row02_client_decodes_what_it_was_told(start_simulator: SimulatorFactory,
                                                     start_proxy: ProxyFactory) -> None:
    """Without Accept-Encoding the upstream sends identity; with it, gzip that decodes to J."""

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_negotiating(request))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/vms"))
            plain = await client.response()
            await client.send(request_bytes("GET", "/v1/vms",
                                            "Accept-Encoding: gzip, deflate, br"))
            packed = await client.response()
    assert upstream.requests[0].headers("Accept-Encoding") == []
    assert (plain.status, plain.body, plain.headers("Content-Encoding")) == (200, J, [])
    assert upstream.requests[1].headers("Accept-Encoding") == ["gzip, deflate, br"]
    assert packed.headers("Content-Encoding") == ["gzip"]
    assert gzip.decompress(packed.body) == J
    assert packed.framing == [f"Content-Length: {len(packed.body)}"]


@pytest.mark.parametrize("coding", ["br", "gzip, br", "zstd", "x-custom"])
async def test_row03_unknown_and_stacked_encodings_pass_through(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, coding: str) -> None:
    """Codings the proxy cannot decode (brotli, stacked, zstd, private) pass unchanged."""
    b = bytes(range(200, 216))

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", (f"Content-Encoding: {coding}",
                                               "Content-Length: 16"), b))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        _, client = await _get(proxy.port or 0, "/v1/blob", "Accept-Encoding: br, gzip")
        async with client:
            reply = await client.response()
    assert (reply.status, reply.body) == (200, b)
    assert reply.headers("Content-Encoding") == [coding]
    assert reply.framing == ["Content-Length: 16"]


async def test_row05_chunked_upstream_gives_one_framing_header_and_streams(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A chunked upstream answer reaches the client chunked (no Content-Length), chunk by
    chunk: the first chunk arrives before the upstream sends the third."""
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", ("Transfer-Encoding: chunked",)))
        for part in (b"a", b"bb", b"ccc"):
            sent_at.append(loop.time())
            writer.write(chunk(part))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(chunk(b""))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        _, client = await _get(proxy.port or 0, "/v1/stream")
        async with client:
            reply = await client.response()
    assert reply.framing == ["Transfer-Encoding: chunked"]
    assert reply.body == b"abbccc"
    assert reply.chunk_times[0] < sent_at[2]


@pytest.mark.parametrize(("upstream_headers", "expected_framing"), [
    (("Content-Length: 6",), ["Content-Length: 6"]),
    (("Connection: close",), ["Transfer-Encoding: chunked"]),  # body delimited by close
])
async def test_row05_length_or_close_delimited_upstream_gives_one_framing_header(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
        upstream_headers: tuple[str, ...], expected_framing: list[str]) -> None:
    """Content-Length stays the only framing header; a close-delimited body is re-framed
    chunked for the client's keep-alive connection; never both headers."""

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", upstream_headers, b"abbccc"))
        if "Connection: close" in upstream_headers:
            writer.close()

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        _, client = await _get(proxy.port or 0, "/v1/small")
        async with client:
            reply = await client.response()
    assert (reply.status, reply.body) == (200, b"abbccc")
    assert reply.framing == expected_framing


async def _truncated_reply(start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
                           head: tuple[str, ...], sent: bytes,
                           ) -> tuple[RawResponse, list[MutableMapping[str, Any]]]:
    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", head, sent))
        await writer.drain()
        writer.close()

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        with captured_logs() as events:
            _, client = await _get(proxy.port or 0, "/v1/truncated")
            async with client:
                reply = await client.response()
                assert await client.closed_by_peer(2)
    return reply, events


async def test_row06_upstream_closing_early_aborts_the_client(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """400 of 1000 promised bytes then a close: the client sees a short read and a closed
    connection, never a complete message; one WARNING names the path and 400/1000."""
    reply, events = await _truncated_reply(start_simulator, start_proxy,
                                           ("Content-Length: 1000",), b"x" * 400)
    assert reply.status == 200
    assert not reply.complete
    assert len(reply.body) <= 400
    (warning,) = [e for e in events if e["log_level"] == "warning"]
    assert warning["event"] == "upstream_broke_off"
    assert (warning["path"], warning["received"], warning["expected"]) == \
        ("/v1/truncated", 400, 1000)


async def test_row06_chunked_upstream_closing_early_gets_no_last_chunk(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A chunked answer cut off mid-stream never gets the terminating chunk from the proxy."""
    reply, events = await _truncated_reply(start_simulator, start_proxy,
                                           ("Transfer-Encoding: chunked",), chunk(b"x" * 400))
    assert not reply.complete
    assert len(events_named(events, "upstream_broke_off")) == 1


async def test_row06_upstream_closing_before_the_head_gives_502(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """An upstream that closes before any response byte gives a complete 502 JSON error."""

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        _, client = await _get(proxy.port or 0, "/v1/gone")
        async with client:
            reply = await client.response()
    assert reply.status == 502
    assert json.loads(reply.body)["error"]["code"] == "upstream_error"
