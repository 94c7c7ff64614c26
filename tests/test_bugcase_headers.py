"""bug-cases.md rows 16-22: hop-by-hop headers dropped both ways, the upstream's Host, repeated
headers kept apart and in order, nothing added, large headers accepted and a clear 431 past
the configured limit, the token header found in any letter case."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest

from tests.bugcase_support import (
    KeystoneStub,
    captured_logs,
    events_named,
    proxy_to,
    raw_upstream,
    request_bytes,
)
from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config
from tests.rawhttp import RawClient, RawRequest, json_reply, response_bytes

CLIENT_HOP_BY_HOP = ("Connection: keep-alive, X-Hop", "X-Hop: 1", "Keep-Alive: timeout=5",
                     "TE: trailers", "Trailer: X-T", "Upgrade: h2c",
                     "Proxy-Authorization: Basic dTpw", "Proxy-Connection: keep-alive",
                     "X-Normal: 2")
DROPPED_UPSTREAM = ("x-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
                    "proxy-connection", "connection")


async def test_row16_hop_by_hop_headers_are_dropped_both_ways(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Hop-by-hop headers, and those the Connection header names, never cross the proxy in
    either direction; the client's connection stays usable after the upstream's `close`."""

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", (
            "Connection: close, X-Up-Hop", "X-Up-Hop: v", "Keep-Alive: timeout=1",
            "Proxy-Authenticate: Basic", "X-Up-Normal: 3", "Content-Length: 2"), b"ok"))
        writer.close()

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/hop", *CLIENT_HOP_BY_HOP))
            first = await client.response()
            await client.send(request_bytes("GET", "/v1/again"))
            second = await client.response()
    seen = upstream.requests[0]
    assert seen.headers("X-Normal") == ["2"]
    assert not {name.lower() for name, _ in seen.header_lines} & set(DROPPED_UPSTREAM)
    names = {name.lower() for name, _ in first.header_lines}
    assert not names & {"x-up-hop", "keep-alive", "proxy-authenticate"}
    assert first.headers("Connection") != ["close"]
    assert (first.status, first.body, first.headers("X-Up-Normal")) == (200, b"ok", ["3"])
    assert (second.status, second.body) == (200, b"ok")


async def test_row17_upstream_host_replaces_the_clients(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """The upstream sees one Host header naming itself (as configured), never the proxy's."""
    async with raw_upstream(json_reply()) as upstream:
        port = upstream.url.rsplit(":", 1)[1]
        proxy = await proxy_to(start_simulator, start_proxy, f"http://localhost:{port}")
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(b"GET /v1/x HTTP/1.1\r\nHost: localhost:8787\r\n\r\n")
            assert (await client.response()).status == 200
    assert upstream.requests[0].headers("Host") == [f"localhost:{port}"]


async def _upstream_headers_reach_client(start_simulator: SimulatorFactory,
                                         start_proxy: ProxyFactory,
                                         lines: tuple[str, ...]) -> list[tuple[str, str]]:
    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", (*lines, "Content-Length: 0")))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/login"))
            return (await client.response()).header_lines


async def test_row18_repeated_headers_stay_separate_and_in_order(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Three Set-Cookie lines, two Link and two Vary lines reach the client unchanged."""
    lines = ("Set-Cookie: a=1; Path=/",
             "Set-Cookie: b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Path=/",
             "Link: </a>; rel=next", "Set-Cookie: c=3", "Link: </b>; rel=prev",
             "Vary: Accept", "Vary: Accept-Encoding")
    got = await _upstream_headers_reach_client(start_simulator, start_proxy, lines)
    for name in ("Set-Cookie", "Link", "Vary"):
        expected = [line.split(": ", 1)[1] for line in lines if line.startswith(name)]
        assert [v for k, v in got if k.lower() == name.lower()] == expected


async def test_row19_expiring_and_setting_the_same_cookie_keeps_both_lines(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """`s=` (expired) then `s=new` both arrive, in that order, byte for byte."""
    lines = ("Set-Cookie: s=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
             "Set-Cookie: s=new; Path=/")
    got = await _upstream_headers_reach_client(start_simulator, start_proxy, lines)
    assert [v for k, v in got if k.lower() == "set-cookie"] == \
        [line.split(": ", 1)[1] for line in lines]


async def test_row20_no_headers_are_added(start_simulator: SimulatorFactory,
                                          start_proxy: ProxyFactory) -> None:
    """A request with only Host and User-Agent arrives with Host, User-Agent and the token:
    no Accept, Accept-Encoding or library User-Agent is added."""
    async with raw_upstream(json_reply()) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"User-Agent: curl/8\r\n\r\n")
            assert (await client.response()).status == 200
    (seen,) = upstream.requests
    assert sorted(name.lower() for name, _ in seen.header_lines) == \
        ["host", "user-agent", "x-auth-token"]
    assert seen.headers("User-Agent") == ["curl/8"]


async def test_row21_large_token_and_cookie_are_accepted(start_proxy: ProxyFactory) -> None:
    """A 10,000-character token from identity and a 9,000-byte Cookie reach the upstream whole."""
    big_token = "T" * 10_000
    keystone = KeystoneStub(tokens=[big_token])
    cookie = "c=" + "k" * 8_998
    async with raw_upstream(keystone.respond) as k, raw_upstream(json_reply()) as upstream:
        proxy = await proxy_to(None, start_proxy, upstream.url,
                               identity_url=f"{k.url}/v3/auth/tokens", routes=("/v1/**=account",))
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/x", f"Cookie: {cookie}"))
            assert (await client.response()).status == 200
    (seen,) = upstream.requests
    assert seen.headers("X-Auth-Token") == [big_token]
    assert seen.headers("Cookie") == [cookie]
    assert len(keystone.posts) == 1


async def test_row21_client_header_over_the_limit_gets_431(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    """With proxy.max_header_size = 16 KiB, a 20,000-byte header line gets a JSON 431 naming
    the header, the upstream is not contacted and nothing logs a traceback."""
    sim = await start_simulator()
    async with raw_upstream(json_reply()) as upstream:
        config = proxy_config(upstream.url, env={
            "ZCOMPUTE_IDENTITY_URL": f"{base_url(sim)}/api/v2/identity/auth"})
        proxy = await start_proxy(dataclasses.replace(config, max_header_size=16 * 1024))
        with caplog.at_level(logging.DEBUG):
            async with await RawClient.connect(proxy.port or 0) as client:
                await client.send(request_bytes("GET", "/v1/x", "X-Fine: " + "f" * 16_000,
                                                "X-Big: " + "b" * 20_000))
                reply = await client.response()
    assert reply.status == 431
    error = json.loads(reply.body)["error"]
    assert "X-Big" in error["message"]
    assert "X-Fine" not in error["message"]
    assert upstream.requests == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_row21_upstream_header_over_the_limit_gives_502_and_a_log(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """An upstream header line beyond proxy.max_header_size gives a JSON 502 and a WARNING
    that names the limit, never a traceback or the header's value."""

    async def respond(_r: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_bytes("200 OK", ("Set-Cookie: s=" + "v" * 70_000,
                                               "Content-Length: 0")))

    async with raw_upstream(respond) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        with captured_logs() as events:
            async with await RawClient.connect(proxy.port or 0) as client:
                await client.send(request_bytes("GET", "/v1/x"))
                reply = await client.response()
    assert reply.status == 502
    assert "max_header_size" in json.loads(reply.body)["error"]["message"]
    (warning,) = events_named(events, "upstream_header_too_large")
    assert "vvvv" not in repr(warning)


async def test_row22_lowercase_subject_token_header_is_found(start_proxy: ProxyFactory) -> None:
    """Identity answering `x-subject-token` (lower case) still gives the token: one login."""
    keystone = KeystoneStub(token_header="x-subject-token")
    async with raw_upstream(keystone.respond) as k, raw_upstream(json_reply()) as upstream:
        proxy = await proxy_to(None, start_proxy, upstream.url,
                               identity_url=f"{k.url}/v3/auth/tokens", routes=("/v1/**=account",))
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", "/v1/x"))
            assert (await client.response()).status == 200
    assert upstream.requests[0].headers("X-Auth-Token") == ["TOK-A"]
    assert len(keystone.posts) == 1
