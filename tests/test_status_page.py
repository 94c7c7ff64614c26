"""The status page in a real headless Chromium, plus readiness and metrics."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pyotp
import pytest

from proxy import simulator
from tests.browser import browser, chromium_path
from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config, sim_state
from tests.processes import ROOT

BOB_ENV = {"ZCOMPUTE_USERNAME": simulator.BOB, "ZCOMPUTE_PASSWORD": simulator.BOB_PASSWORD}
needs_chromium = pytest.mark.skipif(
    chromium_path() is None and os.environ.get("CI") != "true",
    reason="chromium is not installed (CI installs it)")


@needs_chromium
@pytest.mark.timeout(90)
async def test_page_shows_mfa_need_takes_a_code_and_shows_tokens(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """Open the page, see 'TOTP code needed', type a code, see the tokens and state ok.

    With UPDATE_SCREENSHOT=1 the screenshot README shows is refreshed in docs/."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim), env=BOB_ENV))
    async with aiohttp.ClientSession() as client:
        waiting = asyncio.create_task(client.get(f"{base_url(proxy)}/api/v2/compute/vms"))
        async with browser() as page:
            await page.goto(f"{base_url(proxy)}/_proxy/")
            state = await page.wait_for(
                "document.getElementById('state').textContent === 'TOTP code needed' && "
                "document.getElementById('state').textContent")
            assert state == "TOTP code needed"
            assert await page.evaluate("!document.getElementById('totp-form').hidden")
            code = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET).now()
            await page.evaluate(f"document.getElementById('code').value = '{code}'; "
                                "document.querySelector('#totp-form button').click(); true")
            response = await asyncio.wait_for(waiting, 20)
            assert response.status == 200
            response.release()
            await page.wait_for("document.getElementById('state').textContent === 'ok'")
            rows = await page.wait_for(
                "document.querySelectorAll('#tokens tbody tr').length === 2 && "
                "Array.from(document.querySelectorAll('#tokens tbody tr'))"
                ".map(r => r.cells[0].textContent).join(',')", deadline=15)
            assert set(rows.split(",")) == {"account", "project:dev"}
            text = await page.evaluate("document.body.innerText")
            assert "sha256:" in text
            assert simulator.BOB_PASSWORD not in text
            shot = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path
            await page.screenshot(shot / "status-page.png")
    assert sim_state(sim).stats.snapshot()["identity"]["totp_receipt"] == 1


async def test_page_is_served_with_a_strict_policy(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """The page and its files are same-origin only: CSP, no framing, no CORS header."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession() as client:
        for path, kind in (("/_proxy/", "text/html"), ("/_proxy/static/status.js",
                                                       "text/javascript"),
                           ("/_proxy/static/status.css", "text/css")):
            async with client.get(f"{base_url(proxy)}{path}") as resp:
                assert resp.status == 200
                assert resp.content_type == kind
                assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
                assert "Access-Control-Allow-Origin" not in resp.headers
        async with client.get(f"{base_url(proxy)}/_proxy/static/status.html") as resp:
            assert resp.status == 404
        async with client.get(f"{base_url(proxy)}/_proxy/static/..%2Fadmin.py") as resp:
            assert resp.status == 404


async def test_ready_fails_only_on_a_latched_login(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """/_proxy/ready is 200 normally and during an identity outage, 503 once a login latched."""
    sim = await start_simulator()
    good = await start_proxy(proxy_config(base_url(sim)))
    bad = await start_proxy(proxy_config(base_url(sim), env={"ZCOMPUTE_PASSWORD": "nope"}))
    async with aiohttp.ClientSession() as client:
        await (await client.post(f"{base_url(sim)}/_sim/outage?seconds=1")).read()
        for proxy in (good, bad):
            async with client.get(f"{base_url(proxy)}/api/v2/compute/vms") as resp:
                assert resp.status == 503
            async with client.get(f"{base_url(proxy)}/_proxy/ready") as resp:
                assert (resp.status, await resp.json()) == (200, {"ready": True})
        await asyncio.sleep(1.5)  # past the outage and the Retry-After it announced
        async with client.get(f"{base_url(bad)}/api/v2/compute/vms") as resp:
            assert resp.status == 502
        async with client.get(f"{base_url(bad)}/_proxy/ready") as resp:
            body = await resp.json()
            assert resp.status == 503
            assert "account" in body["scopes"]
        async with client.get(f"{base_url(bad)}/_proxy/health") as resp:
            assert resp.status == 200


def test_docs_folder_exists() -> None:
    """The screenshot lands in docs/, which the README links."""
    assert (ROOT / "docs").is_dir()
    assert Path(ROOT / "README.md").read_text().count("docs/status-page.png") >= 1
