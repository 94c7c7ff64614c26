"""End to end: real clients → the proxy → the built-in simulator, all on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import aiohttp
import pytest

from proxy import simulator
from proxy.app import TOKENS
from proxy.scope import ACCOUNT, project
from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config, sim_state

SCOPE = "X-Simulator-Scope"


async def _curl(*args: str) -> tuple[int, str]:
    """Run curl off the event loop; return (http status, body)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-w", "\n%{http_code}", *args, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_plain_curl_reaches_project_and_account_routes(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """curl with no token gets the project's VMs and the account's projects."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    status, body = await _curl(f"{base_url(proxy)}/api/v2/compute/vms")
    assert status == 200
    vms = json.loads(body)
    assert {vm["project"]["name"] for vm in vms} == {simulator.DEV_PROJECT}
    status, body = await _curl(f"{base_url(proxy)}/api/v2/identity/projects")
    assert status == 200
    projects = json.loads(body)["projects"]
    assert {p["name"] for p in projects} >= {simulator.DEV_PROJECT, simulator.PROD_PROJECT}
    stats = sim_state(sim).stats.snapshot()
    assert stats["identity"]["password"] == 1
    assert stats["identity"]["token"] == 1
    assert stats["scopes"] == {f"account:{simulator.DEFAULT_ACCOUNT}": 1,
                               f"project:{simulator.DEV_PROJECT}": 1}


async def test_concurrent_cold_requests_cause_one_login_and_one_rescope_per_project(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """200 concurrent cold requests over account and two projects: 1 login, 1 re-scope each."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    targets = [("/api/v2/compute/vms", {}),
               ("/api/v2/compute/vms", {"X-Zcompute-Project": simulator.PROD_PROJECT}),
               ("/api/v2/identity/users", {})]
    async with aiohttp.ClientSession(base_url(proxy)) as client:

        async def one(i: int) -> tuple[int, str]:
            path, headers = targets[i % 3]
            async with client.get(path, headers=headers) as resp:
                await resp.read()
                return resp.status, resp.headers[SCOPE]

        results = await asyncio.gather(*(one(i) for i in range(200)))
    assert {status for status, _ in results} == {200}
    assert {scope for _, scope in results} == {
        f"project:{simulator.DEV_PROJECT}", f"project:{simulator.PROD_PROJECT}",
        f"account:{simulator.DEFAULT_ACCOUNT}"}
    identity = sim_state(sim).stats.snapshot()["identity"]
    assert identity["password"] == 1
    assert identity["token"] == 2
    assert identity["failures"] == 0


async def test_request_after_token_lifetime_gets_a_fresh_token(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Once the token's lifetime has passed, the next request logs in again and succeeds."""
    sim = await start_simulator(token_ttl=2.0)
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession(base_url(proxy)) as client:
        async with client.get("/api/v2/identity/users") as resp:
            assert resp.status == 200
        await asyncio.sleep(2.2)
        async with client.get("/api/v2/identity/users") as resp:
            assert resp.status == 200
    stats = sim_state(sim).stats.snapshot()
    assert stats["identity"]["password"] == 2
    assert stats["resources"]["by_status"] == {"200": 2}
    assert stats["resources"]["distinct_tokens"] == 2


async def test_wrong_password_gives_clear_error_and_exactly_one_login(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A rejected password is tried once; every request gets a JSON error naming the scope."""
    sim = await start_simulator(lockout_attempts=3)
    config = proxy_config(base_url(sim), env={"ZCOMPUTE_PASSWORD": "not-the-password"})
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession(base_url(proxy)) as client:

        async def one() -> tuple[int, dict[str, object]]:
            async with client.get("/api/v2/compute/vms") as resp:
                return resp.status, await resp.json()

        results = await asyncio.gather(*(one() for _ in range(20)))
        results += [await one() for _ in range(5)]
    assert {status for status, _ in results} == {502}
    error = results[-1][1]["error"]
    assert isinstance(error, dict)
    assert error["code"] == "credentials_rejected"
    assert error["scope"] == "account"
    assert "401" in str(error["message"])
    assert "not-the-password" not in json.dumps(results)
    identity = sim_state(sim).stats.snapshot()["identity"]
    assert identity["password"] == 1
    assert identity["failures"] == 1


@pytest.mark.parametrize("mfa_mode", ["auto", "combined"])
async def test_mfa_user_with_totp_secret(start_simulator: SimulatorFactory,
                                         start_proxy: ProxyFactory, mfa_mode: str) -> None:
    """An MFA user works through the receipt flow (auto) and the one-request flow (combined)."""
    sim = await start_simulator()
    config = proxy_config(base_url(sim), env={
        "ZCOMPUTE_USERNAME": simulator.BOB, "ZCOMPUTE_PASSWORD": simulator.BOB_PASSWORD,
        "ZCOMPUTE_TOTP_SECRET": simulator.DEFAULT_TOTP_SECRET, "ZCOMPUTE_MFA": mfa_mode})
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession(base_url(proxy)) as client:
        for path in ("/api/v2/compute/vms", "/api/v2/identity/users"):
            async with client.get(path) as resp:
                assert resp.status == 200, await resp.text()
    identity = sim_state(sim).stats.snapshot()["identity"]
    if mfa_mode == "auto":
        assert (identity["receipts"], identity["totp_receipt"], identity["password"]) == (1, 1, 1)
    else:
        assert (identity["receipts"], identity["totp_receipt"], identity["password"]) == (0, 0, 1)
    assert identity["token"] == 1
    assert identity["auto_enable_mfa"] == 0


async def test_api_explorer_prefix_is_stripped(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A path copied from the API Explorer (before zCompute 25.06) still reaches the API."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession(base_url(proxy)) as client, \
            client.get("/api-explorer/api/v2/compute/vms") as resp:
        assert resp.status == 200
        assert resp.headers[SCOPE] == f"project:{simulator.DEV_PROJECT}"


async def test_status_shows_fingerprints_never_tokens(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """/_proxy/status lists each cached scope with expiry and a short fingerprint only."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession(base_url(proxy)) as client:
        async with client.get("/api/v2/compute/vms") as resp:
            assert resp.status == 200
        async with client.get("/_proxy/health") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        async with client.get("/_proxy/status") as resp:
            text = await resp.text()
    status = json.loads(text)
    assert {row["scope"] for row in status["tokens"]} == {"account", "project:dev"}
    assert all(row["fingerprint"].startswith("sha256:") for row in status["tokens"])
    assert all(3 * 3600 < row["seconds_left"] <= 4 * 3600 for row in status["tokens"])
    manager = proxy.app[TOKENS]
    for scope in (ACCOUNT, project(simulator.DEV_PROJECT)):
        assert (await manager.get(scope)).value not in text
    assert simulator.ALICE_PASSWORD not in text


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/_proxy/nothing"), ("GET", "/_proxy/status/"), ("PUT", "/_proxy/status"),
    ("GET", "/_proxy/login"), ("DELETE", "/_proxy/health")])
async def test_unknown_admin_paths_stay_local(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, method: str,
        path: str) -> None:
    """Paths under /_proxy/ that are not our endpoints get a local 404, never forwarded."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession() as client, \
            client.request(method, f"{base_url(proxy)}{path}") as resp:
        assert resp.status in (404, 405)
        assert resp.headers.get(SCOPE) is None
    assert sim_state(sim).stats.snapshot()["identity"]["requests"] == 0


async def test_unknown_projects_cost_no_password_login_and_keep_the_proxy_ready(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Many client-chosen unknown projects: a fast 403 each, one re-scope per name at most,
    no password login, and /_proxy/ready stays 200."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    async with aiohttp.ClientSession(base_url(proxy)) as client:
        async with client.get("/api/v2/compute/vms") as resp:
            assert resp.status == 200

        async def unknown(name: str) -> tuple[int, str]:
            async with client.get("/api/v2/compute/vms",
                                  headers={"X-Zcompute-Project": name}) as resp:
                return resp.status, (await resp.json())["error"]["code"]

        results = await asyncio.gather(*(unknown(f"nope-{i % 50}") for i in range(200)))
        async with client.get("/_proxy/ready") as resp:
            assert resp.status == 200
    assert set(results) == {(403, "project_refused")}
    identity = sim_state(sim).stats.snapshot()["identity"]
    assert identity["password"] == 1
    assert identity["token"] <= 1 + 50
