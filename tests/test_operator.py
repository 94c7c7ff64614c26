"""Operator-facing token behaviour: latch and its release, human TOTP codes, outages, renewal
in the background, revoke on exit, and the TOTP one-use rule."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestServer

from proxy import simulator
from proxy.clock import SystemClock
from proxy.credentials import SecretPasscodes
from proxy.secret import Secret
from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config, sim_state
from tests.doubles import FakeClock

BOB_ENV = {"ZCOMPUTE_USERNAME": simulator.BOB, "ZCOMPUTE_PASSWORD": simulator.BOB_PASSWORD}


async def _call(server: TestServer, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client, \
            client.request(method, f"{base_url(server)}{path}", **kwargs) as resp:
        return resp.status, await resp.json()


def _identity(sim: TestServer) -> dict[str, int]:
    stats: dict[str, int] = sim_state(sim).stats.snapshot()["identity"]
    return stats


async def test_latch_released_by_login_after_the_password_is_fixed(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A rejected login latches; after the server-side fix, POST /_proxy/login logs in again."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim), env={"ZCOMPUTE_PASSWORD": "new-pass"}))
    assert (await _call(proxy, "GET", "/api/v2/identity/users"))[0] == 502
    status, body = await _call(proxy, "GET", "/_proxy/status")
    assert body["errors"]["account"]["code"] == "credentials_rejected"
    await _call(sim, "POST", "/_sim/password", json={"user": "alice", "password": "new-pass"})
    assert (await _call(proxy, "GET", "/api/v2/identity/users"))[0] == 502  # still latched
    assert _identity(sim)["failures"] == 1
    status, body = await _call(proxy, "POST", "/_proxy/login")
    assert (status, body["login"]) == (200, "ok")
    assert (await _call(proxy, "GET", "/api/v2/identity/users"))[0] == 200


async def test_reload_with_new_credentials_clears_the_latch(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """POST /_proxy/reload re-reads the configuration; new credentials drop latch and tokens."""
    sim = await start_simulator()
    wrong = proxy_config(base_url(sim), env={"ZCOMPUTE_PASSWORD": "typo"})
    right = proxy_config(base_url(sim))
    configs = iter([wrong, right])
    proxy = await start_proxy(wrong, loader=lambda: next(configs))
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 502
    status, body = await _call(proxy, "POST", "/_proxy/reload")  # same config: stays latched
    assert (status, body["changes"]) == (200, [])
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 502
    status, body = await _call(proxy, "POST", "/_proxy/reload")
    assert body["changes"] == ["credentials: tokens dropped, next request logs in"]
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 200
    assert _identity(sim)["failures"] == 1


async def test_human_totp_code_via_admin_endpoint_unblocks_waiting_requests(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Without a secret, requests wait for a code; POST /_proxy/totp lets them all through."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim), env=BOB_ENV))
    waiting = [asyncio.create_task(_call(proxy, "GET", "/api/v2/compute/vms")) for _ in range(5)]
    for _ in range(100):
        _, status = await _call(proxy, "GET", "/_proxy/status")
        if status["mfa"].startswith("needed now"):
            break
        await asyncio.sleep(0.02)
    assert status["mfa"] == "needed now: a login is waiting for a TOTP code"
    code = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET).now()
    accepted = await _call(proxy, "POST", "/_proxy/totp", json={"code": code})
    assert accepted == (200, {"accepted": True})
    assert {status for status, _ in await asyncio.gather(*waiting)} == {200}
    reused = await _call(proxy, "POST", "/_proxy/totp", data={"code": code})
    assert reused[0] == 400
    assert "used already" in reused[1]["error"]["message"]
    stray = await _call(proxy, "POST", "/_proxy/totp", json={"code": "000000"})
    assert stray[0] == 409  # no login waits: a stray or guessed code never starts one
    assert stray[1]["error"]["code"] == "no_login_waiting"
    _, status = await _call(proxy, "GET", "/_proxy/status")
    assert status["mfa"].startswith("needed in ")


async def test_no_totp_code_in_time_gives_503_saying_how(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """When nobody gives a code within mfa_wait, the request gets 503 with the three ways."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim), env={**BOB_ENV,
                                                                "ZCOMPUTE_MFA_WAIT": "1"}))
    started = time.monotonic()
    status, body = await _call(proxy, "GET", "/api/v2/compute/vms")
    assert status == 503
    assert time.monotonic() - started < 3
    assert body["error"]["code"] == "mfa_required"
    assert "zcompute-proxy totp CODE" in body["error"]["hint"]
    assert "/_proxy/totp" in body["error"]["hint"]


async def test_identity_outage_spares_valid_tokens_and_recovers(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """During an identity outage cached tokens keep working; a new scope gets 503 + Retry-After;
    after the outage, it works without a restart."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 200
    await _call(sim, "POST", "/_sim/outage?seconds=2")
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 200
    async with aiohttp.ClientSession() as client, client.get(
            f"{base_url(proxy)}/api/v2/compute/vms",
            headers={"X-Zcompute-Project": simulator.PROD_PROJECT}) as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
    await asyncio.sleep(2.5)
    status, _ = await _call(proxy, "GET", "/api/v2/compute/vms",
                            headers={"X-Zcompute-Project": simulator.PROD_PROJECT})
    assert status == 200


async def test_renewal_window_does_not_make_requests_wait(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Inside the renewal window requests keep the current token while one renewal runs."""
    sim = await start_simulator(token_ttl=4.0)  # floor 0.8 s, renewal from ~1.6 s left
    proxy = await start_proxy(proxy_config(base_url(sim)))
    assert (await _call(proxy, "GET", "/api/v2/identity/users"))[0] == 200
    await asyncio.sleep(2.6)
    await _call(sim, "POST", "/_sim/outage?seconds=1")  # the renewal fails, old token serves
    statuses = [(await _call(proxy, "GET", "/api/v2/identity/users"))[0] for _ in range(5)]
    assert statuses == [200] * 5
    assert _identity(sim)["outage"] == 1
    await asyncio.sleep(1.2)
    for _ in range(20):
        await _call(proxy, "GET", "/api/v2/identity/users")
        if _identity(sim)["issued"] == 2:
            break
        await asyncio.sleep(0.1)
    assert _identity(sim)["issued"] == 2
    assert sim_state(sim).stats.snapshot()["resources"]["by_status"].get("401") is None


async def test_revoke_on_exit(start_simulator: SimulatorFactory, aiohttp_server: Any) -> None:
    """With tokens.revoke_on_exit, stopping the proxy revokes each cached token."""
    from proxy.app import create_app, runner_options  # noqa: PLC0415

    sim = await start_simulator()
    config = proxy_config(base_url(sim), env={"ZCOMPUTE_REVOKE_ON_EXIT": "true"})
    proxy = await aiohttp_server(create_app(config), **runner_options(config))
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 200
    await proxy.close()
    assert _identity(sim)["revocations"] == 2


async def test_secret_passcodes_never_reuse_a_time_step() -> None:
    """A second login in the same 30 s step waits for the next step's code."""
    clock = FakeClock(wall_now=30 * 1_000_000 + 29.8)
    source = SecretPasscodes(Secret(simulator.DEFAULT_TOTP_SECRET), clock)
    first = await source.passcode()
    started = time.monotonic()
    second = await source.passcode()
    assert 0.15 < time.monotonic() - started < 1.0
    totp = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET)
    assert (first, second) == (totp.at(30 * 1_000_000), totp.at(30 * 1_000_001))


@pytest.mark.parametrize("code", ["12345", "abcdef", "123456789"])
async def test_malformed_human_codes_are_refused(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, code: str) -> None:
    """POST /_proxy/totp refuses anything but 6 to 8 digits, with a hint, and echoes nothing."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim), env=BOB_ENV))
    status, body = await _call(proxy, "POST", "/_proxy/totp", json={"code": code})
    assert status == 400
    assert "6 to 8 digits" in body["error"]["message"]
    assert code not in str(body)


def test_system_clock_reads_both_clocks() -> None:
    """SystemClock gives time.monotonic() and time.time()."""
    clock = SystemClock()
    assert abs(clock.wall() - time.time()) < 1
    assert abs(clock.monotonic() - time.monotonic()) < 1


async def test_log_warns_ahead_when_a_person_will_need_to_give_a_code(
        start_simulator: SimulatorFactory) -> None:
    """Without a secret, the log warns 'MFA needed in N minutes' once renewal is near."""
    from structlog.testing import capture_logs  # noqa: PLC0415

    from proxy.credentials import HumanPasscodes  # noqa: PLC0415
    from proxy.scope import ACCOUNT  # noqa: PLC0415
    from proxy.services import build_services, mfa_notices  # noqa: PLC0415

    sim = await start_simulator(token_ttl=1200)  # renewal due ~12 minutes after login
    services = build_services(proxy_config(base_url(sim), env=BOB_ENV))
    try:
        passcodes = services.passcodes
        assert isinstance(passcodes, HumanPasscodes)
        needed = asyncio.Event()
        passcodes.on_needed.append(needed.set)
        login = asyncio.create_task(services.tokens.get(ACCOUNT))
        await asyncio.wait_for(needed.wait(), 5)
        passcodes.supply(pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET).now())
        await login
        with capture_logs() as logs:
            notices = asyncio.create_task(mfa_notices(services, interval=0.05))
            await asyncio.sleep(0.2)
            notices.cancel()
    finally:
        await services.close()
    warnings = [e for e in logs if e["event"] == "mfa_needed_soon"]
    assert warnings
    assert warnings[0]["detail"].startswith("needed in 1")  # 11 or 12 minutes
    assert "zcompute-proxy totp CODE" in warnings[0]["how"]


async def test_code_used_elsewhere_is_retried_once_with_the_next_code(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Another process (say `zcompute-proxy check`) used this step's code: after the receipt
    proved the password right, the proxy waits for the next code and logs in."""
    step = 30 * 60_000_000
    clock = FakeClock(wall_now=step + 29.7)
    sim = await start_simulator(clock=clock.wall)
    env = {**BOB_ENV, "ZCOMPUTE_TOTP_SECRET": simulator.DEFAULT_TOTP_SECRET}
    proxy = await start_proxy(proxy_config(base_url(sim), env=env), clock=clock)
    totp = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET)
    user = {"name": simulator.BOB, "domain": {"name": simulator.DEFAULT_ACCOUNT}}
    used_elsewhere = {"auth": {"identity": {
        "methods": ["password", "totp"],
        "password": {"user": {**user, "password": simulator.BOB_PASSWORD}},
        "totp": {"user": {**user, "passcode": totp.at(step)}}}}}
    assert (await _call(sim, "POST", "/api/v2/identity/auth", json=used_elsewhere))[0] == 201

    async def next_step_arrives() -> None:
        await asyncio.sleep(0.15)
        clock.advance(1.0)

    ticking = asyncio.create_task(next_step_arrives())
    status, _ = await _call(proxy, "GET", "/api/v2/identity/users")
    await ticking
    assert status == 200
    identity = _identity(sim)
    assert (identity["receipts"], identity["totp_receipt"]) == (1, 2)
    assert identity["failures"] == 1  # the reused code, once


async def test_reload_names_settings_that_need_a_restart(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """A reload that changes the listen address or log level says a restart is needed;
    a broken configuration is refused and logged, and the running one is kept."""
    from structlog.testing import capture_logs  # noqa: PLC0415

    from proxy.errors import ConfigError  # noqa: PLC0415

    sim = await start_simulator()
    first = proxy_config(base_url(sim))
    changed = proxy_config(base_url(sim), env={"ZCOMPUTE_LOG_LEVEL": "debug",
                                               "ZCOMPUTE_LISTEN": "127.0.0.1:18999"})

    def broken() -> Any:
        raise ConfigError("ZCOMPUTE_URL must be an http(s) URL")

    loaders = iter([lambda: changed, broken])

    def loader() -> Any:
        return next(loaders)()

    proxy = await start_proxy(first, loader=loader)
    status, body = await _call(proxy, "POST", "/_proxy/reload")
    assert status == 200
    assert set(body["changes"]) == {"listen changed: restart to apply",
                                    "log changed: restart to apply"}
    with capture_logs() as logs:
        status, body = await _call(proxy, "POST", "/_proxy/reload")
    assert status == 500
    assert body["error"]["code"] == "config_error"
    assert any(e["event"] == "reload_failed" for e in logs)
    assert (await _call(proxy, "GET", "/api/v2/compute/vms"))[0] == 200
