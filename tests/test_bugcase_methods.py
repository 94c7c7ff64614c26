"""bug-cases.md rows 24-26: HEAD, 204 and 304 carry no body and leave both connections in
step; `Expect: 100-continue` is answered promptly, or with a final error when no token comes."""

from __future__ import annotations

import asyncio
import hashlib
import json

from tests.bugcase_support import proxy_to, raw_upstream, request_bytes
from tests.conftest import ProxyFactory, SimulatorFactory, proxy_config
from tests.processes import free_port
from tests.rawhttp import RawClient, RawRequest, response_bytes

SMALL = b'{"small": true}'


async def _small(writer: asyncio.StreamWriter) -> None:
    writer.write(response_bytes("200 OK", ("Content-Type: application/json",
                                           f"Content-Length: {len(SMALL)}"), SMALL))


async def test_row24_head_keeps_content_length_and_sends_no_body(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """HEAD answers with the upstream's Content-Length and no body, promptly; the next GET on
    the same client connection gets its own body."""

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        if request.request_line.startswith("HEAD"):
            writer.write(response_bytes("200 OK", ("Content-Length: 1488324",
                                                   "Content-Type: application/zip")))
        else:
            await _small(writer)

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/warm"))
            await client.response()  # the login happens here, not in the timed HEAD
            loop = asyncio.get_running_loop()
            started = loop.time()
            await client.send(request_bytes("HEAD", "/v1/file"))
            head = await client.response("HEAD")
            took = loop.time() - started
            await client.send(request_bytes("GET", "/v1/small"))
            small = await client.response()
    assert head.status == 200
    assert head.framing == ["Content-Length: 1488324"]
    assert took < 0.2
    assert (small.status, small.body) == (200, SMALL)


async def _stray_last_chunk_204(request: RawRequest, writer: asyncio.StreamWriter,
                                gap: float) -> None:
    if request.headers("If-None-Match"):
        writer.write(response_bytes("304 Not Modified", ('ETag: "e1"', "Content-Length: 4")))
    elif request.request_line.startswith("DELETE"):
        writer.write(response_bytes("204 No Content", ("Transfer-Encoding: chunked",)))
        if gap:
            await writer.drain()
            await asyncio.sleep(gap)
        writer.write(b"0\r\n\r\n")
    else:
        await _small(writer)


async def test_row25_304_and_204_carry_no_body_and_keep_connections_in_step(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A 304 with Content-Length and a 204 sent chunked with a stray last chunk give bodiless
    answers without Transfer-Encoding, the 304 in < 200 ms; further requests on the same
    client connection work (the upstream connection that sent stray bytes is not reused)."""

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await _stray_last_chunk_204(request, writer, gap=0.02)

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/warm"))
            await client.response()
            started = asyncio.get_running_loop().time()
            await client.send(request_bytes("GET", "/v1/res", 'If-None-Match: "e1"'))
            not_modified = await client.response()
            took = asyncio.get_running_loop().time() - started
            await client.send(request_bytes("DELETE", "/v1/res/1"))
            deleted = await client.response()
            for _ in range(3):
                await client.send(request_bytes("GET", "/v1/res/2"))
                third = await client.response()
                assert (third.status, third.body) == (200, SMALL)
    assert (not_modified.status, not_modified.headers("ETag")) == (304, ['"e1"'])
    assert not_modified.headers("Transfer-Encoding") == []
    assert took < 0.2
    assert (deleted.status, deleted.framing) == (204, [])
    assert upstream.connections >= 2  # the polluted connection was dropped


async def test_row25_204_with_stray_bytes_in_the_same_packet_is_a_clean_502(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """When the stray last chunk arrives in the same read as the 204 head, aiohttp's parser
    rejects the whole answer: the client gets a complete 502 JSON error (not a desync) and
    its connection keeps working."""

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await _stray_last_chunk_204(request, writer, gap=0)

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("DELETE", "/v1/res/1"))
            deleted = await client.response()
            await client.send(request_bytes("GET", "/v1/res/2"))
            after = await client.response()
    assert deleted.status == 502
    assert "invalid HTTP" in json.loads(deleted.body)["error"]["message"]
    assert (after.status, after.body) == (200, SMALL)


async def test_row26_expect_100_continue_is_answered_before_the_body(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A 1 MiB PUT with Expect: 100-continue gets `100 Continue` within 1 s; the body then
    reaches the upstream once, intact, all in under 2 s."""
    body = bytes(range(256)) * 4096

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256(request.body).hexdigest().encode()
        writer.write(response_bytes("200 OK", (f"Content-Length: {len(digest)}",), digest))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("PUT", "/v1/obj", "Expect: 100-continue",
                                            f"Content-Length: {len(body)}"))
            interim = await client.response(limit_s=1.0)
            await client.send(body)
            final = await client.response()
        took = loop.time() - started
    assert interim.status == 100
    assert (final.status, final.body) == (200, hashlib.sha256(body).hexdigest().encode())
    assert len(upstream.requests) == 1
    assert took < 2.0


async def test_row26_expect_with_identity_down_gets_a_final_error_without_the_body(
        start_proxy: ProxyFactory) -> None:
    """With identity unreachable, the Expect request gets a final 502/503 within 1 s, before
    any body byte is sent, and the connection is marked to close."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with raw_upstream(lambda _r, _w: asyncio.sleep(0)) as upstream:
        config = proxy_config(upstream.url, env={"ZCOMPUTE_IDENTITY_URL": f"{dead}/v3/auth"})
        proxy = await start_proxy(config)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("PUT", "/v1/obj", "Expect: 100-continue",
                                            "Content-Length: 1048576"))
            final = await client.response(limit_s=1.0)
    assert final.status in (502, 503)
    assert json.loads(final.body)["error"]["status"] == final.status
    assert final.headers("Connection") == ["close"]
    assert upstream.requests == []
