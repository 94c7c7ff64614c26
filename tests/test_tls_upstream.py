"""TLS to the upstream: verified by default, a CA bundle for a private CA, and `insecure`
that works but warns at every start; against the simulator behind a `trustme` certificate."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy import simulator
from tests.conftest import ProxyFactory, base_url, proxy_config
from tests.processes import free_port, running


@dataclass
class TlsUpstream:
    """The simulator served over HTTPS with a certificate from a private CA."""

    url: str
    ca_file: Path
    state: simulator.SimState

    def identity_requests(self) -> int:
        """Requests that reached the identity API (0 when every TLS handshake failed)."""
        return int(self.state.stats.snapshot()["identity"]["requests"])


async def _serve_tls(tmp_path: Path, names: list[str]) -> tuple[web.AppRunner, TlsUpstream]:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    app = simulator.create_app(simulator.SimulatorOptions())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, TlsUpstream(f"https://127.0.0.1:{port}", ca_file, app[simulator.SIM_STATE])


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[TlsUpstream]:
    """A simulator whose certificate names 127.0.0.1, signed by a CA nobody trusts yet."""
    runner, upstream = await _serve_tls(tmp_path, ["127.0.0.1"])
    yield upstream
    await runner.cleanup()


async def _get(proxy_url: str, path: str = "/api/v2/compute/vms") -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as client, client.get(proxy_url + path) as resp:
        return resp.status, json.loads(await resp.read())


async def test_tls_is_verified_by_default(tls_upstream: TlsUpstream,
                                          start_proxy: ProxyFactory) -> None:
    """An untrusted certificate fails the handshake: a clear error, and no request (so no
    password) ever reaches the server."""
    proxy = await start_proxy(proxy_config(tls_upstream.url))
    status, body = await _get(base_url(proxy))
    assert status == 503
    assert "Certificate" in str(body["error"])
    assert tls_upstream.identity_requests() == 0


async def test_ca_bundle_trusts_a_private_ca(tls_upstream: TlsUpstream,
                                             start_proxy: ProxyFactory) -> None:
    """With the CA in `upstream.ca_bundle`, login and forwarding work over verified TLS."""
    proxy = await start_proxy(proxy_config(tls_upstream.url, env={
        "ZCOMPUTE_CA_BUNDLE": str(tls_upstream.ca_file)}))
    status, _body = await _get(base_url(proxy))
    assert status == 200
    assert tls_upstream.identity_requests() == 2  # one login, one re-scope


async def test_ca_bundle_still_checks_the_host_name(tmp_path: Path,
                                                    start_proxy: ProxyFactory) -> None:
    """A certificate from the trusted CA but for another name is still refused."""
    runner, upstream = await _serve_tls(tmp_path, ["zcompute.example.com"])
    try:
        proxy = await start_proxy(proxy_config(upstream.url, env={
            "ZCOMPUTE_CA_BUNDLE": str(upstream.ca_file)}))
        status, _body = await _get(base_url(proxy))
        assert status == 503
        assert upstream.identity_requests() == 0
    finally:
        await runner.cleanup()


async def test_insecure_works_and_warns_at_every_start(tls_upstream: TlsUpstream) -> None:
    """`--insecure` skips verification and logs a warning each time the proxy starts."""
    env = {"ZCOMPUTE_URL": tls_upstream.url, "ZCOMPUTE_USERNAME": simulator.ALICE,
           "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
           "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT,
           "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD, "ZCOMPUTE_LOG_FORMAT": "json"}
    for _ in range(2):
        port = free_port()
        with running(["serve", "--listen", f"127.0.0.1:{port}", "--insecure"],
                     f"http://127.0.0.1:{port}/_proxy/health", env) as proc:
            status, _body = await _get(f"http://127.0.0.1:{port}")
            assert status == 200
        events = [json.loads(line) for line in proc.stderr().splitlines()
                  if line.startswith("{")]
        warnings = [e["message"] for e in events if e["event"] == "config_warning"]
        assert any("TLS certificate verification of the upstream is OFF" in str(w)
                   for w in warnings)
