"""The Keystone tier itself (no proxy): real Keystone v3 logins and the auth_token service."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pyotp
import pytest

from .conftest import TIER_TEST_TIMEOUT_S
from .tier import KeystoneTier

pytestmark = [pytest.mark.keystone, pytest.mark.timeout(TIER_TEST_TIMEOUT_S)]

RECEIPT_HEADER = "Openstack-Auth-Receipt"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def password(user: str, pw: str, account: str) -> dict[str, Any]:
    return {"user": {"name": user, "password": pw, "domain": {"name": account}}}


def totp(user: str, secret: str, account: str) -> dict[str, Any]:
    code = pyotp.TOTP(secret).now()
    return {"user": {"name": user, "passcode": code, "domain": {"name": account}}}


def project_scope(t: KeystoneTier, project: str) -> dict[str, Any]:
    return {"project": {"domain": {"name": t.account}, "name": project}}


def domain_scope(t: KeystoneTier) -> dict[str, Any]:
    return {"domain": {"name": t.account}}


async def login(
    http: aiohttp.ClientSession,
    t: KeystoneTier,
    identity: dict[str, Any],
    scope: dict[str, Any] | None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST the auth envelope; return (status, headers, JSON body)."""
    auth: dict[str, Any] = {"identity": identity}
    if scope is not None:
        auth["scope"] = scope
    async with http.post(
        t.auth_url, params={"nocatalog": ""}, json={"auth": auth}, headers=headers
    ) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def carol_token(http: aiohttp.ClientSession, t: KeystoneTier, scope: dict[str, Any]) -> str:
    identity = {"methods": ["password"], "password": password(t.carol, t.carol_password, t.account)}
    status, headers, body = await login(http, t, identity, scope)
    assert status == 201, body
    return headers["X-Subject-Token"]


async def call_service(
    http: aiohttp.ClientSession, t: KeystoneTier, path: str, token: str | None
) -> tuple[int, dict[str, str], Any]:
    headers = {"X-Auth-Token": token} if token is not None else {}
    async with http.get(t.service_url + path, headers=headers) as resp:
        try:
            body: Any = await resp.json(content_type=None)
        except ValueError:
            body = await resp.text()
        return resp.status, dict(resp.headers), body


def parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_password_login_domain_scope(http: aiohttp.ClientSession, keystone_tier) -> None:
    """A password login scoped to the account (domain) answers 201 with X-Subject-Token."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.carol, t.carol_password, t.account)}
    status, headers, body = await login(http, t, identity, domain_scope(t))
    assert status == 201, body
    assert headers["X-Subject-Token"].startswith("gAAAA")
    token = body["token"]
    assert token["domain"]["name"] == t.account
    assert "project" not in token
    assert "member" in {r["name"] for r in token["roles"]}
    lifetime = parse_ts(token["expires_at"]) - parse_ts(token["issued_at"])
    assert abs(lifetime.total_seconds() - t.token_expiration_s) <= 1


async def test_password_login_project_scope(http: aiohttp.ClientSession, keystone_tier) -> None:
    """A password login scoped to a project of the account answers 201 with that project."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.carol, t.carol_password, t.account)}
    status, headers, body = await login(http, t, identity, project_scope(t, t.project_alpha))
    assert status == 201, body
    assert headers["X-Subject-Token"]
    project = body["token"]["project"]
    assert project["name"] == t.project_alpha
    assert project["id"] == t.project_id(t.project_alpha)
    assert project["domain"]["name"] == t.account


async def test_rescope_with_token_method_keeps_expires_at(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """Re-scoping an account token to a project with the token method keeps its expires_at."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.carol, t.carol_password, t.account)}
    status, headers, body = await login(http, t, identity, domain_scope(t))
    assert status == 201, body
    account_token, expires_at = headers["X-Subject-Token"], body["token"]["expires_at"]
    await asyncio.sleep(1.1)  # a new password login now would expire later
    rescope = {"methods": ["token"], "token": {"id": account_token}}
    status, headers, body = await login(http, t, rescope, project_scope(t, t.project_beta))
    assert status == 201, body
    assert headers["X-Subject-Token"] != account_token
    assert body["token"]["project"]["name"] == t.project_beta
    assert parse_ts(body["token"]["expires_at"]) == parse_ts(expires_at)


async def test_mfa_password_only_gets_receipt(http: aiohttp.ClientSession, keystone_tier) -> None:
    """The MFA user's password-only login answers 401 with a receipt and the required methods."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.dave, t.dave_password, t.account)}
    status, headers, body = await login(http, t, identity, project_scope(t, t.project_alpha))
    assert status == 401
    assert headers[RECEIPT_HEADER].startswith("gAAAA")
    assert "X-Subject-Token" not in headers
    assert [sorted(rule) for rule in body["required_auth_methods"]] == [["password", "totp"]]
    assert body["receipt"]["methods"] == ["password"]


async def test_mfa_finish_with_totp_and_receipt(http: aiohttp.ClientSession, keystone_tier) -> None:
    """Sending the receipt back with a TOTP-only identity finishes the MFA login (201)."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.dave, t.dave_password, t.account)}
    status, headers, _ = await login(http, t, identity, project_scope(t, t.project_alpha))
    assert status == 401
    receipt = headers[RECEIPT_HEADER]
    second = {"methods": ["totp"], "totp": totp(t.dave, t.dave_totp_secret, t.account)}
    status, headers, body = await login(
        http, t, second, project_scope(t, t.project_alpha), headers={RECEIPT_HEADER: receipt}
    )
    assert status == 201, body
    assert headers["X-Subject-Token"]
    assert sorted(body["token"]["methods"]) == ["password", "totp"]
    assert body["token"]["user"]["name"] == t.dave


async def test_mfa_password_and_totp_in_one_request(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """Password and TOTP in a single request log the MFA user in to the account (201)."""
    t = keystone_tier
    identity = {
        "methods": ["password", "totp"],
        "password": password(t.dave, t.dave_password, t.account),
        "totp": totp(t.dave, t.dave_totp_secret, t.account),
    }
    status, headers, body = await login(http, t, identity, domain_scope(t))
    assert status == 201, body
    assert headers["X-Subject-Token"]
    assert body["token"]["domain"]["name"] == t.account


async def test_mfa_wrong_totp_is_plain_401(http: aiohttp.ClientSession, keystone_tier) -> None:
    """A wrong TOTP code with the receipt gets a 401 like bad credentials."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.dave, t.dave_password, t.account)}
    status, headers, _ = await login(http, t, identity, domain_scope(t))
    assert status == 401
    good = pyotp.TOTP(t.dave_totp_secret)
    now = dt.datetime.now(dt.UTC)
    valid = {good.at(now + dt.timedelta(seconds=30 * k)) for k in (-2, -1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in valid)
    second = {
        "methods": ["totp"],
        "totp": {"user": {"name": t.dave, "passcode": wrong, "domain": {"name": t.account}}},
    }
    status, _, body = await login(
        http, t, second, domain_scope(t), headers={RECEIPT_HEADER: headers[RECEIPT_HEADER]}
    )
    assert status == 401
    assert body["error"]["code"] == 401


async def test_wrong_password_is_401(http: aiohttp.ClientSession, keystone_tier) -> None:
    """A wrong password gets 401 with a Keystone error body and no receipt."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.lockme, "not-it", t.account)}
    try:
        status, headers, body = await login(http, t, identity, project_scope(t, t.project_alpha))
    finally:
        t.reset_lockout(t.lockme)
    assert status == 401
    assert RECEIPT_HEADER not in headers
    assert headers["WWW-Authenticate"].startswith("Keystone uri=")
    assert body["error"]["code"] == 401
    assert body["error"]["title"] == "Unauthorized"


async def test_lockout_after_failed_logins(http: aiohttp.ClientSession, keystone_tier) -> None:
    """After the configured failures even the right password gets a plain 401 until reset."""
    t = keystone_tier
    scope = project_scope(t, t.project_alpha)
    wrong = {"methods": ["password"], "password": password(t.lockme, "not-it", t.account)}
    right = {
        "methods": ["password"],
        "password": password(t.lockme, t.lockme_password, t.account),
    }
    t.reset_lockout(t.lockme)
    try:
        for _ in range(t.lockout_failure_attempts):
            status, _, _ = await login(http, t, wrong, scope)
            assert status == 401
        status, headers, body = await login(http, t, right, scope)
        assert status == 401
        assert RECEIPT_HEADER not in headers
        assert body["error"]["code"] == 401
    finally:
        t.reset_lockout(t.lockme)
    status, _, body = await login(http, t, right, scope)
    assert status == 201, body


async def test_service_health_needs_no_token(http: aiohttp.ClientSession, keystone_tier) -> None:
    """The service's /health answers 200 without a token."""
    status, _, body = await call_service(http, keystone_tier, "/health", None)
    assert (status, body) == (200, {"status": "ok"})


async def test_service_rejects_missing_and_invalid_tokens(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """auth_token answers 401 (with WWW-Authenticate) for no token and for a garbage token."""
    t = keystone_tier
    for token in (None, "gAAAAAnot-a-real-token"):
        status, headers, _ = await call_service(http, t, "/project/vms", token)
        assert status == 401, token
        assert headers["WWW-Authenticate"] == f'Keystone uri="{t.keystone_url}"'


async def test_service_project_path_echoes_project_token(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """A project token on /project/... gets 200 and an echo of what the middleware saw."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.carol, t.carol_password, t.account)}
    status, headers, body = await login(http, t, identity, project_scope(t, t.project_beta))
    assert status == 201
    token = headers["X-Subject-Token"]
    status, _, echo = await call_service(http, t, "/project/vms?limit=2", token)
    assert status == 200, echo
    assert echo == {
        "path": "/project/vms",
        "method": "GET",
        "query": "limit=2",
        "body": "",
        "project_name": t.project_beta,
        "project_id": t.project_id(t.project_beta),
        "domain_name": t.account,
        "domain_id": t.domain_id,
        "user_name": t.carol,
        "user_id": t.user_id(t.carol),
        "roles": ["member", "reader"],
        "scope": "project",
        "token_expires": body["token"]["expires_at"],
    }


async def test_service_account_path_echoes_domain_token(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """A domain (account) token on /account/... gets 200 with scope "domain"."""
    t = keystone_tier
    token = await carol_token(http, t, domain_scope(t))
    status, _, echo = await call_service(http, t, "/account/users", token)
    assert status == 200, echo
    assert echo["scope"] == "domain"
    assert echo["domain_name"] == t.account
    assert echo["project_name"] is None
    assert echo["user_name"] == t.carol


async def test_service_wrong_scope_is_403(http: aiohttp.ClientSession, keystone_tier) -> None:
    """A project token on /account/... and a domain token on /project/... both get 403."""
    t = keystone_tier
    project_token = await carol_token(http, t, project_scope(t, t.project_alpha))
    domain_token = await carol_token(http, t, domain_scope(t))
    status, _, body = await call_service(http, t, "/account/users", project_token)
    assert status == 403, body
    assert body["error"]["code"] == 403
    status, _, body = await call_service(http, t, "/project/vms", domain_token)
    assert status == 403, body


async def test_service_rejects_revoked_token(http: aiohttp.ClientSession, keystone_tier) -> None:
    """A token revoked in Keystone gets 401 from the service at once (validation cache off)."""
    t = keystone_tier
    token = await carol_token(http, t, project_scope(t, t.project_alpha))
    status, _, _ = await call_service(http, t, "/project/vms", token)
    assert status == 200
    admin = await asyncio.to_thread(t.admin_token)
    async with http.delete(
        t.auth_url, headers={"X-Auth-Token": admin, "X-Subject-Token": token}
    ) as resp:
        assert resp.status == 204
    status, _, _ = await call_service(http, t, "/project/vms", token)
    assert status == 401


async def test_service_request_log(http: aiohttp.ClientSession, keystone_tier) -> None:
    """The service logs each request with its status and a fingerprint, never the token."""
    t = keystone_tier
    t.clear_service_log()
    token = await carol_token(http, t, project_scope(t, t.project_alpha))
    await call_service(http, t, "/project/a?x=1", token)
    await call_service(http, t, "/project/b", None)
    await call_service(http, t, "/health", None)
    entries = t.service_requests()
    assert [(e["path"], e["query"], e["status"]) for e in entries] == [
        ("/project/a", "x=1", 200),
        ("/project/b", "", 401),
    ]
    assert entries[0]["token_sha256"] is not None
    assert entries[1]["token_sha256"] is None
    assert token not in t.service_log_path.read_text()


@pytest.mark.slow
async def test_expired_token_is_401_at_the_service(
    http: aiohttp.ClientSession, keystone_tier
) -> None:
    """A token past its expires_at (30 s lifetime here) gets 401 from the service."""
    t = keystone_tier
    identity = {"methods": ["password"], "password": password(t.carol, t.carol_password, t.account)}
    status, headers, body = await login(http, t, identity, project_scope(t, t.project_alpha))
    assert status == 201
    token = headers["X-Subject-Token"]
    expires = parse_ts(body["token"]["expires_at"])
    status, _, _ = await call_service(http, t, "/project/vms", token)
    assert status == 200
    wait = (expires - dt.datetime.now(dt.UTC)).total_seconds() + 1.5
    assert 0 < wait < t.token_expiration_s + 5
    await asyncio.sleep(wait)
    status, _, _ = await call_service(http, t, "/project/vms", token)
    assert status == 401
