"""The real `zcompute-proxy serve` in front of the real Keystone tier (all on loopback).

Each test starts the proxy CLI as a subprocess with `--upstream` = the protected service and
`--identity-url` = Keystone's /v3/auth/tokens, routes `/account/**=account` and
`/project/**=project`, and talks to it with aiohttp, exactly as a user's script would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pyotp
import pytest
from yarl import URL

from tests.processes import free_port, running

from .conftest import TIER_TEST_TIMEOUT_S
from .tier import KeystoneTier

pytestmark = [pytest.mark.keystone, pytest.mark.timeout(TIER_TEST_TIMEOUT_S)]

ROUTES = ("--route", "/account/**=account", "--route", "/project/**=project")


@contextlib.contextmanager
def proxy(
    t: KeystoneTier,
    user: str,
    password: str,
    *,
    project: str | None = None,
    totp_secret: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run `zcompute-proxy serve` for `user` against the tier; yield its base URL."""
    port = free_port()
    args = [
        "serve",
        "--upstream",
        t.service_url,
        "--identity-url",
        t.auth_url,
        "--listen",
        f"127.0.0.1:{port}",
        *ROUTES,
        "--log-format",
        "json",
        *extra,
    ]
    env = {
        "ZCOMPUTE_USERNAME": user,
        "ZCOMPUTE_ACCOUNT": t.account,
        "ZCOMPUTE_PROJECT": project or t.project_alpha,
        "ZCOMPUTE_PASSWORD": password,
    }
    if totp_secret:
        env["ZCOMPUTE_TOTP_SECRET"] = totp_secret
    base = f"http://127.0.0.1:{port}"
    with running(args, f"{base}/_proxy/health", env=env):
        yield base


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def proxy_status(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    status, body = await get(http, f"{base}/_proxy/status")
    assert status == 200
    return dict(body)


def fingerprints(entries: list[dict[str, Any]], prefix: str) -> set[str]:
    return {e["token_sha256"] for e in entries if e["path"].startswith(prefix)}


async def test_proxy_health(http: aiohttp.ClientSession, keystone_tier) -> None:
    """The proxy answers /_proxy/health with 200 once started against the tier."""
    t = keystone_tier
    with proxy(t, t.carol, t.carol_password) as base:
        assert await get(http, f"{base}/_proxy/health") == (200, {"status": "ok"})


async def test_proxy_injects_project_and_account_tokens(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """Plain requests get a default-project token on /project and a domain token on /account."""
    t = keystone_tier
    t.clear_service_log()
    with proxy(t, t.carol, t.carol_password) as base:
        status, echo = await get(http, f"{base}/project/vms")
        assert status == 200, echo
        assert (echo["scope"], echo["project_name"], echo["user_name"]) == (
            "project",
            t.project_alpha,
            t.carol,
        )
        assert echo["domain_name"] == t.account
        status, echo = await get(http, f"{base}/account/users")
        assert status == 200, echo
        assert (echo["scope"], echo["domain_name"], echo["project_name"]) == (
            "domain",
            t.account,
            None,
        )
        # The token the service saw is the one the proxy reports (by fingerprint only).
        cached = {
            row["scope"]: row["fingerprint"] for row in (await proxy_status(http, base))["tokens"]
        }
    seen = {e["path"]: e["token_sha256"] for e in t.service_requests()}
    for path, scope in (
        ("/project/vms", f"project:{t.project_alpha}"),
        ("/account/users", "account"),
    ):
        assert cached[scope] == "sha256:" + seen[path][: len(cached[scope]) - len("sha256:")]


async def test_proxy_project_header_selects_project(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """X-Zcompute-Project picks another project, and is not forwarded to the service."""
    t = keystone_tier
    t.clear_service_log()
    with proxy(t, t.carol, t.carol_password) as base:
        status, echo = await get(
            http, f"{base}/project/vms", headers={"X-Zcompute-Project": t.project_beta}
        )
        assert status == 200, echo
        assert echo["project_name"] == t.project_beta
        assert echo["project_id"] == t.project_id(t.project_beta)
        status, echo = await get(http, f"{base}/project/vms")
        assert (status, echo["project_name"]) == (200, t.project_alpha)
    headers = {name.lower() for e in t.service_requests() for name in e["headers"]}
    assert "x-zcompute-project" not in headers


async def test_proxy_rescoped_project_token_keeps_account_expiry(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """The proxy's project token is re-scoped from its account token (same expires_at)."""
    t = keystone_tier
    with proxy(t, t.carol, t.carol_password) as base:
        status, account = await get(http, f"{base}/account/users")
        assert status == 200, account
        status, project = await get(http, f"{base}/project/vms")
        assert status == 200, project
        status, beta = await get(
            http, f"{base}/project/vms", headers={"X-Zcompute-Project": t.project_beta}
        )
        assert status == 200, beta
    assert account["token_expires"] == project["token_expires"] == beta["token_expires"]


async def test_proxy_forwards_method_query_and_body(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """A POST with a query and a JSON body reaches the service unchanged."""
    t = keystone_tier
    payload = '{"name": "web-1", "flavor": "small"}'
    with proxy(t, t.carol, t.carol_password) as base:
        async with http.post(
            URL(f"{base}/project/vms?dry_run=1&x=%2F", encoded=True),  # keep %2F as sent
            data=payload,
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200
            echo = await resp.json()
    assert (echo["method"], echo["query"], echo["body"]) == ("POST", "dry_run=1&x=%2F", payload)


async def test_proxy_concurrent_cold_requests_share_one_token_per_scope(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """60 concurrent cold requests over two projects and the account use one token per scope."""
    t = keystone_tier
    t.clear_service_log()
    targets = [
        ("/project/vms", {}),
        ("/project/volumes", {"X-Zcompute-Project": t.project_beta}),
        ("/account/users", {}),
    ]
    with proxy(t, t.carol, t.carol_password) as base:

        async def one(i: int) -> int:
            path, headers = targets[i % len(targets)]
            async with http.get(base + path, headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(60)))
    assert set(statuses) == {200}
    entries = t.service_requests()
    assert len(entries) == 60
    assert {e["status"] for e in entries} == {200}
    tokens = [fingerprints(entries, path) for path, _ in targets]
    assert [len(fps) for fps in tokens] == [1, 1, 1]
    assert len(set.union(*tokens)) == 3


@pytest.mark.parametrize("mfa", ["auto", "combined", "receipt"])
async def test_proxy_mfa_user_with_totp_secret(
    http: aiohttp.ClientSession, keystone_tier, mfa: str
) -> None:
    """The MFA user reaches both scopes with a TOTP secret, whichever MFA mode is set."""
    t = keystone_tier
    with proxy(
        t, t.dave, t.dave_password, totp_secret=t.dave_totp_secret, extra=("--mfa", mfa)
    ) as base:
        status, echo = await get(http, f"{base}/project/vms")
        assert status == 200, echo
        assert (echo["user_name"], echo["project_name"]) == (t.dave, t.project_alpha)
        status, echo = await get(http, f"{base}/account/users")
        assert status == 200, echo
        assert (echo["user_name"], echo["scope"]) == (t.dave, "domain")


async def test_proxy_mfa_user_without_secret_takes_a_code_from_a_person(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """Without a TOTP secret, a code POSTed to /_proxy/totp completes the MFA user's login."""
    t = keystone_tier
    with proxy(t, t.dave, t.dave_password, extra=("--mfa-wait", "20")) as base:
        request = asyncio.create_task(get(http, f"{base}/project/vms"))
        await asyncio.sleep(0.5)  # the login is now waiting (a code sent earlier is kept too)
        code = pyotp.TOTP(t.dave_totp_secret).now()
        async with http.post(f"{base}/_proxy/totp", json={"code": code}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["accepted"] is True
        status, echo = await asyncio.wait_for(request, 25)
    assert status == 200, echo
    assert (echo["user_name"], echo["project_name"]) == (t.dave, t.project_alpha)


async def test_proxy_mfa_user_without_code_fails_fast(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """When no TOTP code comes within --mfa-wait, the request gets the proxy's 503 JSON error."""
    t = keystone_tier
    t.clear_service_log()
    with proxy(t, t.dave, t.dave_password, extra=("--mfa-wait", "1")) as base:
        started = time.monotonic()
        status, body = await get(http, f"{base}/project/vms")
        assert time.monotonic() - started < 10
    assert status == 503, body
    assert body["source"] == "zcompute-proxy"
    assert body["error"]["code"] == "mfa_required"
    assert t.service_requests() == []


async def test_proxy_revoke_on_exit_revokes_its_tokens_in_keystone(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """With --revoke-on-exit, stopping the proxy revokes the tokens it held (Keystone events)."""
    t = keystone_tier
    before = len(await asyncio.to_thread(t.revocation_events))
    with proxy(t, t.carol, t.carol_password, extra=("--revoke-on-exit",)) as base:
        assert (await get(http, f"{base}/project/vms"))[0] == 200
        assert (await get(http, f"{base}/account/users"))[0] == 200
        held = len((await proxy_status(http, base))["tokens"])
    assert held == 2
    after = len(await asyncio.to_thread(t.revocation_events))
    assert after - before >= held


async def test_proxy_wrong_password_is_latched_not_retried(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """A rejected password is tried once: later requests fail fast and Keystone saw 1 failure."""
    t = keystone_tier
    t.reset_lockout(t.lockme)
    t.clear_service_log()
    try:
        with proxy(t, t.lockme, "not-the-password") as base:
            results = []
            for _ in range(t.lockout_failure_attempts + 2):
                started = time.monotonic()
                results.append(await get(http, f"{base}/project/vms"))
                assert time.monotonic() - started < 5
        assert {status for status, _ in results} == {502}
        for _, body in results:
            assert body["source"] == "zcompute-proxy"
            assert body["error"]["code"] == "credentials_rejected"
            assert "not-the-password" not in str(body)
        assert t.failed_logins(t.lockme) == 1
        assert t.service_requests() == []
    finally:
        t.reset_lockout(t.lockme)


async def test_proxy_recovers_when_its_tokens_are_revoked(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """After Keystone revokes the user's tokens, the next request is replayed with a new one."""
    t = keystone_tier
    t.clear_service_log()
    with proxy(t, t.erin, t.erin_password) as base:
        status, echo = await get(http, f"{base}/project/vms")
        assert (status, echo["user_name"]) == (200, t.erin)
        await asyncio.to_thread(t.set_user_enabled, t.erin, False)  # revokes all her tokens
        await asyncio.to_thread(t.set_user_enabled, t.erin, True)
        # Fernet times have 1 s resolution: a login in the same second as the revocation
        # event would count as revoked too.
        await asyncio.sleep(1.1)
        status, echo = await get(http, f"{base}/project/vms")
        assert (status, echo.get("user_name")) == (200, t.erin), echo
    entries = t.service_requests()
    assert [e["status"] for e in entries] == [200, 401, 200]
    first, revoked, fresh = (e["token_sha256"] for e in entries)
    assert first == revoked != fresh


@pytest.mark.slow
async def test_proxy_renews_tokens_across_expiry(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """Across a 30 s token lifetime, proxies for carol and MFA dave never send an expired token."""
    t = keystone_tier
    t.clear_service_log()
    with (
        proxy(t, t.carol, t.carol_password) as carol_base,
        proxy(t, t.dave, t.dave_password, totp_secret=t.dave_totp_secret) as dave_base,
    ):
        first_expiry: dt.datetime | None = None
        deadline = time.monotonic() + t.token_expiration_s * 3
        while time.monotonic() < deadline:
            for base in (carol_base, dave_base):
                for path in ("/project/vms", "/account/users"):
                    status, echo = await get(http, base + path)
                    assert status == 200, (base, path, echo)
                    expires = dt.datetime.fromisoformat(echo["token_expires"])
                    first_expiry = first_expiry or expires
            now = dt.datetime.now(dt.UTC)
            if first_expiry is not None and now > first_expiry + dt.timedelta(seconds=3):
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail("the loop did not get past the first token's expiry in time")
    entries = t.service_requests()
    assert {e["status"] for e in entries} == {200}  # never an expired token upstream
    # Each proxy renewed each of its scopes at least once.
    for user in (t.carol, t.dave):
        for prefix in ("/project/", "/account/"):
            mine = [e for e in entries if e["user_name"] == user]
            assert len(fingerprints(mine, prefix)) >= 2, (user, prefix)
