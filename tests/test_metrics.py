"""Prometheus metrics at /_proxy/metrics."""

from __future__ import annotations

import aiohttp

from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config


async def test_metrics_count_requests_logins_and_token_expiry(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """/_proxy/metrics has requests by scope, latency, logins by result and token expiry."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession() as client:
        for path in ("/api/v2/compute/vms", "/api/v2/compute/vms", "/api/v2/identity/users"):
            async with client.get(f"{base_url(proxy)}{path}") as resp:
                assert resp.status == 200
        async with client.get(f"{base_url(proxy)}/_proxy/metrics") as resp:
            assert resp.content_type == "text/plain"
            text = await resp.text()
    assert 'zcompute_proxy_requests_total{method="GET",scope="project",status="200"} 2.0' in text
    assert 'zcompute_proxy_requests_total{method="GET",scope="account",status="200"} 1.0' in text
    assert 'zcompute_proxy_token_events_total{result="ok",scope="account"} 1.0' in text
    assert 'zcompute_proxy_token_events_total{result="ok",scope="project"} 1.0' in text
    assert 'zcompute_proxy_request_seconds_count{part="total"} 3.0' in text
    assert 'zcompute_proxy_token_seconds_left{scope="project:dev"}' in text
    assert 'zcompute_proxy_body_bytes_total{direction="to_client"}' in text


async def test_access_log_line_has_the_fields_and_a_request_id(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """One access line per request with scope, status, latency, bytes, token fingerprint and
    the client's X-Request-Id (or a generated one); no token or password in it."""
    from structlog.testing import capture_logs  # noqa: PLC0415

    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as client:
            for headers in ({"X-Request-Id": "req-42"}, {}):
                async with client.get(f"{base_url(proxy)}/api/v2/compute/vms",
                                      headers=headers) as resp:
                    assert resp.status == 200
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == "req-42"
    assert len(second["request_id"]) == 16
    assert (first["method"], first["target"], first["scope"], first["status"]) == (
        "GET", "/api/v2/compute/vms", "project:dev", 200)
    assert first["bytes"] > 0
    assert first["ms"] > 0
    assert first["token"].startswith("sha256:")
