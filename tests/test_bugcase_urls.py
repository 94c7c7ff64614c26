"""bug-cases.md rows 7-15: the request-target reaches the upstream byte for byte, whatever
percent-encoding, `+`, repeated or bare query keys, `;` or empty segments it holds."""

from __future__ import annotations

import pytest

from tests.bugcase_support import proxy_to, raw_upstream, request_bytes
from tests.conftest import ProxyFactory, SimulatorFactory
from tests.rawhttp import RawClient, RawResponse, RawUpstream, json_reply


async def _send_target(start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
                       target: str) -> tuple[RawResponse, RawUpstream]:
    async with raw_upstream(json_reply()) as upstream:
        proxy = await proxy_to(start_simulator, start_proxy, upstream.url)
        async with await RawClient.connect(proxy.port or 0) as client:
            await client.send(request_bytes("GET", target, "User-Agent: curl/8"))
            reply = await client.response()
    return reply, upstream


async def _assert_byte_exact(start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
                             target: str) -> None:
    reply, upstream = await _send_target(start_simulator, start_proxy, target)
    assert reply.status == 200
    (seen,) = upstream.requests
    assert seen.request_line == f"GET {target} HTTP/1.1"
    assert len(seen.headers("X-Auth-Token")) == 1


@pytest.mark.parametrize("target", ["/v1/objects/a%2Fb/meta", "/v1/objects/a%2fb%2F%2F/meta"])
async def test_row07_encoded_slash_is_not_decoded(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, target: str) -> None:
    """`%2F` (either case) stays encoded and is never turned into a path separator."""
    await _assert_byte_exact(start_simulator, start_proxy, target)


@pytest.mark.parametrize("target", ["/v1/container/%3B.txt", "/v1/c/%3b%3D%40%3A%2C"])
async def test_row08_encoded_semicolon_is_not_decoded(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, target: str) -> None:
    """`%3B` and other encoded reserved characters keep their encoding."""
    await _assert_byte_exact(start_simulator, start_proxy, target)


@pytest.mark.parametrize("target", [
    "/v1/p%28test%29?x=1",
    "/v1/x%25y/%252F%7Euser?e=%E2%9C%93&p=%25",  # %25 sequences, %7E, UTF-8 escapes
    "/v1/p(test)!*'?x=(1)",                       # the same characters unencoded
])
async def test_row09_percent_encodings_are_not_normalised(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, target: str) -> None:
    """Encoded and unencoded sub-delimiters, `%25` sequences and UTF-8 escapes stay as sent."""
    await _assert_byte_exact(start_simulator, start_proxy, target)


async def test_row11_plus_and_space_encodings_are_not_conflated(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """`+`, `%20` and `%2B` in path and query arrive exactly as sent."""
    await _assert_byte_exact(start_simulator, start_proxy,
                             "/v1/search/pl+us?q=a+b&r=a%20b&s=a%2Bb")


async def test_row12_bare_and_repeated_query_keys_are_kept(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Keys without `=`, empty values and repeated keys keep their order and spelling."""
    await _assert_byte_exact(start_simulator, start_proxy,
                             "/v1/list?detail&limit=&marker=b&marker=a&sort=")


async def test_row13_semicolon_inside_a_query_value_is_kept(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A `;` inside a query value is not treated as a separator or re-encoded."""
    await _assert_byte_exact(start_simulator, start_proxy,
                             "/v1/fonts?family=Roboto:ital,wght@0,100;1,100&display=swap")


@pytest.mark.parametrize("target", ["/v1//double/", "//v1///x//?a=//"])
async def test_row15_empty_path_segments_are_not_merged(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, target: str) -> None:
    """`//` stays `//` in path and query; no merge and no redirect."""
    await _assert_byte_exact(start_simulator, start_proxy, target)
