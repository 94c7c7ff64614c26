"""Byte fidelity: what a raw client sends arrives at a raw upstream unchanged but for the token."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config
from tests.rawhttp import RawUpstream, json_reply, raw_exchange


async def _proxy_to_raw(start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
                        upstream: RawUpstream) -> TestServer:
    sim = await start_simulator()
    config = proxy_config(upstream.url, env={
        "ZCOMPUTE_IDENTITY_URL": f"{base_url(sim)}/api/v2/identity/auth"})
    return await start_proxy(config)


@pytest.mark.parametrize("target", [
    "/v1/objects/a%2Fb/meta",                                    # row 7: encoded slash
    "/v1/container/%3B.txt",                                     # row 8: encoded ';'
    "/v1/p%28test%29?x=1",                                       # row 9: encoded parentheses
    "/v1/search/pl+us?q=a+b&r=a%20b&s=a%2Bb",                    # row 11: + vs %20 vs %2B
    "/v1/list?detail&limit=&marker=b&marker=a&sort=",            # row 12: bare keys, repeats
    "/v1/fonts?family=Roboto:ital,wght@0,100;1,100&display=swap",  # row 13: ';' in a value
    "/v1//double/",                                              # row 15: empty segments
    "/v1/x%25y/%7Euser?e=%E2%9C%93",                             # %25 and UTF-8 escapes
])
async def test_request_target_arrives_byte_exact(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, target: str) -> None:
    """The raw path and query reach the upstream byte for byte, with one injected token."""
    upstream = await RawUpstream(json_reply()).start()
    try:
        proxy = await _proxy_to_raw(start_simulator, start_proxy, upstream)
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\n\r\n"
        reply = await raw_exchange(proxy.port or 0, request.encode())
        assert reply.startswith(b"HTTP/1.1 200")
        (seen,) = upstream.requests
        assert seen.request_line == f"GET {target} HTTP/1.1"
        assert len(seen.headers("X-Auth-Token")) == 1
        assert seen.headers("X-Auth-Token")[0].startswith("gAAAA")
    finally:
        await upstream.close()


async def test_headers_pass_unchanged_and_nothing_is_added(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Client headers keep order and duplicates; no Accept/Accept-Encoding/User-Agent is added;
    Host is the upstream's; the client's X-Auth-Token and X-Zcompute-Project never pass."""
    upstream = await RawUpstream(json_reply()).start()
    try:
        proxy = await _proxy_to_raw(start_simulator, start_proxy, upstream)
        request = ("GET /api/v2/compute/vms HTTP/1.1\r\nHost: localhost:8787\r\n"
                   "User-Agent: curl/8\r\nX-Auth-Token: client-token\r\nX-Trace: 1\r\n"
                   "X-Trace: 2\r\nX-Zcompute-Project: prod\r\n\r\n")
        await raw_exchange(proxy.port or 0, request.encode())
        (seen,) = upstream.requests
        names = [name.lower() for name, _ in seen.header_lines]
        assert seen.headers("Host") == [upstream.url.removeprefix("http://")]
        assert seen.headers("User-Agent") == ["curl/8"]
        assert seen.headers("X-Trace") == ["1", "2"]
        assert "accept" not in names
        assert "accept-encoding" not in names
        assert "x-zcompute-project" not in names
        assert seen.headers("X-Auth-Token") != ["client-token"]
        assert len(seen.headers("X-Auth-Token")) == 1
    finally:
        await upstream.close()


async def test_none_route_forwards_client_auth_untouched(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """AWS-compatible routes carry the client's own SigV4 auth and get no token from us."""
    upstream = await RawUpstream(json_reply()).start()
    try:
        proxy = await _proxy_to_raw(start_simulator, start_proxy, upstream)
        body = b"Action=DescribeInstances&Version=2016-11-15"
        request = (f"POST /api/v2/aws/ec2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: AWS4-HMAC-SHA256 Credential=AK/x, Signature=ab\r\n"
                   f"Content-Type: application/x-www-form-urlencoded\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        await raw_exchange(proxy.port or 0, request)
        (seen,) = upstream.requests
        assert seen.headers("Authorization") == ["AWS4-HMAC-SHA256 Credential=AK/x, Signature=ab"]
        assert seen.headers("X-Auth-Token") == []
        assert seen.headers("Content-Length") == [str(len(body))]
        assert seen.body == body
    finally:
        await upstream.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_request_body_streams_with_the_clients_framing(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, framing: str) -> None:
    """A 1 MiB upload (over the replay limit) arrives intact, framed as the client framed it."""
    upstream = await RawUpstream(json_reply()).start()
    payload = bytes(range(256)) * 4096
    try:
        proxy = await _proxy_to_raw(start_simulator, start_proxy, upstream)
        if framing == "chunked":
            framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                              for c in (payload[:300_000], payload[300_000:])) + b"0\r\n\r\n"
            head = "Transfer-Encoding: chunked\r\n"
        else:
            framed, head = payload, f"Content-Length: {len(payload)}\r\n"
        request = (f"PUT /api/v2/objects/blob HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Type: application/octet-stream\r\n{head}\r\n").encode() + framed
        reply = await raw_exchange(proxy.port or 0, request)
        assert reply.startswith(b"HTTP/1.1 200")
        (seen,) = upstream.requests
        assert seen.body == payload
        if framing == "chunked":
            assert seen.headers("Content-Length") == []
            assert seen.headers("Transfer-Encoding") == ["chunked"]
        else:
            assert seen.headers("Content-Length") == [str(len(payload))]
            assert seen.headers("Transfer-Encoding") == []
    finally:
        await upstream.close()
