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
