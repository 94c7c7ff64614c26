"""The built-in zCompute simulator, exercised over real loopback HTTP with aiohttp clients."""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest
from aiohttp import ClientResponse, ClientSession, web
from aiohttp.test_utils import TestClient

from proxy import simulator
from proxy.simulator import (
    ALICE,
    ALICE_ID,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    DEFAULT_ACCOUNT,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TOTP_SECRET,
    DEV_PROJECT,
    DEV_PROJECT_ID,
    PROD_PROJECT,
    PROD_PROJECT_ID,
    SIM_STATE,
    SimulatorOptions,
    UsersFileError,
    add_arguments,
    create_app,
    options_from_args,
    serve,
)

AUTH = "/api/v2/identity/auth"
VMS = "/api/v2/compute/vms"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UNAUTHORIZED_BODY = {"error": {"code": 401, "title": "Unauthorized",
                               "message": "The request you have made requires authentication."}}
START = 1_800_000_005.0  # 5 s into a 30 s TOTP step

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def code(clock: FakeClock, offset: float = 0.0) -> str:
    """The demo secret's TOTP code at the fake time plus `offset`."""
    return pyotp.TOTP(DEFAULT_TOTP_SECRET).at(clock.now + offset)


def auth_body(user: str = ALICE, password: str | None = ALICE_PASSWORD, *,
              passcode: str | None = None, scope: Any = None, **extra: Any) -> dict[str, Any]:
    """A Keystone v3 auth body for the demo account; `scope` "account", a project name or a dict."""
    identity: dict[str, Any] = {"methods": []}
    user_ref = {"name": user, "domain": {"name": DEFAULT_ACCOUNT}}
    if password is not None:
        identity["methods"].append("password")
        identity["password"] = {"user": {**user_ref, "password": password}}
    if passcode is not None:
        identity["methods"].append("totp")
        identity["totp"] = {"user": {**user_ref, "passcode": passcode}}
    auth: dict[str, Any] = {"identity": identity, **extra}
    if scope == "account":
        auth["scope"] = {"domain": {"name": DEFAULT_ACCOUNT}}
    elif isinstance(scope, str):
        auth["scope"] = {"project": {"name": scope, "domain": {"name": DEFAULT_ACCOUNT}}}
    elif scope is not None:
        auth["scope"] = scope
    return {"auth": auth}


def rescope_body(token: str, scope: Any) -> dict[str, Any]:
    """A token-method body asking for `scope` (a project name or "account")."""
    body = auth_body(password=None, scope=scope)
    body["auth"]["identity"] = {"methods": ["token"], "token": {"id": token}}
    return body


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock shared by the simulator and the test."""
    return FakeClock()


@pytest.fixture
def make_client(aiohttp_client: Any, clock: FakeClock) -> MakeClient:
    """Start a simulator on loopback with the given options (fake clock by default)."""
    async def make(**options: Any) -> Client:
        options.setdefault("clock", clock)
        client: Client = await aiohttp_client(create_app(SimulatorOptions(**options)))
        return client
    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    """A simulator with the default options."""
    return await make_client()


async def login(client: Client, **kwargs: Any) -> str:
    """Log in (expecting 201) and return the token."""
    resp = await client.post(AUTH, json=auth_body(**kwargs))
    assert resp.status == 201, await resp.text()
    return resp.headers["X-Subject-Token"]


async def get(client: Client, path: str, token: str | None) -> ClientResponse:
    """GET `path` with `token` as X-Auth-Token."""
    return await client.get(path, headers={"X-Auth-Token": token} if token else {})


async def stats(client: Client) -> dict[str, Any]:
    """The simulator's counters."""
    resp = await client.get("/_sim/stats")
    assert resp.status == 200
    result: dict[str, Any] = await resp.json()
    return result


async def test_password_login_project_scope(client: Client) -> None:
    """A password login scoped to a project answers 201 with a Keystone token body."""
    resp = await client.post(AUTH, json=auth_body(scope=DEV_PROJECT))
    assert resp.status == 201
    token = resp.headers["X-Subject-Token"]
    assert token.startswith("gAAAA")
    assert len(token) > 150
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert "Date" in resp.headers
    body = (await resp.json())["token"]
    assert body["methods"] == ["password"]
    assert body["project"] == {"id": DEV_PROJECT_ID, "name": DEV_PROJECT,
                               "domain": {"id": DEFAULT_ACCOUNT_ID, "name": DEFAULT_ACCOUNT}}
    assert "domain" not in body
    assert body["is_domain"] is False
    assert body["user"]["id"] == ALICE_ID
    assert body["user"]["password_expires_at"] is None
    assert ISO.match(body["expires_at"])
    assert ISO.match(body["issued_at"])
    assert body["roles"]
    assert body["audit_ids"]


async def test_password_login_account_scope(client: Client, clock: FakeClock) -> None:
    """A domain-scoped login returns the account as `domain` and a 4-hour lifetime."""
    resp = await client.post(AUTH, json=auth_body(scope="account"))
    assert resp.status == 201
    body = (await resp.json())["token"]
    assert body["domain"] == {"id": DEFAULT_ACCOUNT_ID, "name": DEFAULT_ACCOUNT}
    assert "project" not in body
    state = client.app[SIM_STATE]
    token = state.tokens.get(resp.headers["X-Subject-Token"], clock())
    assert token is not None
    assert token.expires_at - token.issued_at == 14400.0


async def test_unscoped_request_gets_account_scope(client: Client) -> None:
    """A request without a scope is treated as the user's account scope."""
    resp = await client.post(AUTH, json=auth_body())
    assert resp.status == 201
    assert (await resp.json())["token"]["domain"]["name"] == DEFAULT_ACCOUNT


async def test_scope_by_ids_and_keystone_path(client: Client) -> None:
    """Project and domain scopes by id work, and /v3/auth/tokens serves the same API."""
    by_id = auth_body(scope={"project": {"id": PROD_PROJECT_ID}})
    resp = await client.post("/v3/auth/tokens", json=by_id)
    assert resp.status == 201
    assert (await resp.json())["token"]["project"]["name"] == PROD_PROJECT
    by_domain_id = auth_body(scope={"domain": {"id": DEFAULT_ACCOUNT_ID}})
    resp = await client.post(AUTH, json=by_domain_id)
    assert resp.status == 201


async def test_project_name_without_domain_is_400(client: Client) -> None:
    """A project named without its domain is a 400, as in Keystone."""
    resp = await client.post(AUTH, json=auth_body(scope={"project": {"name": DEV_PROJECT}}))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 400


async def test_unknown_project_or_no_access_is_401(client: Client, clock: FakeClock) -> None:
    """An unknown project, or one the user has no role on, answers 401."""
    resp = await client.post(AUTH, json=auth_body(scope="nope"))
    assert resp.status == 401
    bob = auth_body(BOB, BOB_PASSWORD, passcode=code(clock), scope=PROD_PROJECT)
    resp = await client.post(AUTH, json=bob)
    assert resp.status == 401
    assert "no access to project" in (await resp.json())["error"]["message"]


async def test_bad_json_and_unsupported_method(client: Client) -> None:
    """A body that is not JSON is a 400; an unknown auth method is a 401."""
    resp = await client.post(AUTH, data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = {"auth": {"identity": {"methods": ["application_credential"]}}}
    resp = await client.post(AUTH, json=body)
    assert resp.status == 401


async def test_rescope_keeps_parent_expiry(client: Client, clock: FakeClock) -> None:
    """A token re-scoped with the token method keeps the parent's expires_at."""
    resp = await client.post(AUTH, json=auth_body(scope="account"))
    parent = resp.headers["X-Subject-Token"]
    parent_body = (await resp.json())["token"]
    clock.advance(1000)
    resp = await client.post(AUTH, json=rescope_body(parent, DEV_PROJECT))
    assert resp.status == 201
    child = (await resp.json())["token"]
    assert child["expires_at"] == parent_body["expires_at"]
    assert child["issued_at"] != parent_body["issued_at"]
    assert child["methods"] == ["token", "password"]
    assert child["project"]["name"] == DEV_PROJECT
    assert child["audit_ids"][1] == parent_body["audit_ids"][0]
    resp = await client.post(AUTH, json=rescope_body(parent, "account"))
    assert resp.status == 201


async def test_rescope_with_expired_or_unknown_token_fails(client: Client,
                                                           clock: FakeClock) -> None:
    """Re-scoping from an expired or unknown token answers Keystone's 404."""
    parent = await login(client, scope="account")
    clock.advance(14400)
    resp = await client.post(AUTH, json=rescope_body(parent, DEV_PROJECT))
    assert resp.status == 404
    assert (await resp.json())["error"]["message"] == "Failed to validate token"
    resp = await client.post(AUTH, json=rescope_body("gAAAAAgarbage", DEV_PROJECT))
    assert resp.status == 404


async def test_wrong_password_and_unknown_user_get_keystone_401(client: Client) -> None:
    """Bad credentials get the exact Keystone 401 body, WWW-Authenticate and no receipt."""
    for body in (auth_body(password="wrong"), auth_body("mallory", "x")):
        resp = await client.post(AUTH, json=body)
        assert resp.status == 401
        assert await resp.json() == UNAUTHORIZED_BODY
        assert resp.headers["WWW-Authenticate"].startswith('Keystone uri="http://127.0.0.1:')
        assert "Openstack-Auth-Receipt" not in resp.headers


async def test_mfa_receipt_flow(client: Client, clock: FakeClock) -> None:
    """An MFA user's password gets a receipt; TOTP plus the receipt header finishes the login."""
    resp = await client.post(AUTH, json=auth_body(BOB, BOB_PASSWORD, scope=DEV_PROJECT))
    assert resp.status == 401
    receipt = resp.headers["Openstack-Auth-Receipt"]
    body = await resp.json()
    assert body["required_auth_methods"] == [["password", "totp"]]
    assert body["receipt"]["methods"] == ["password"]
    assert ISO.match(body["receipt"]["expires_at"])
    assert "WWW-Authenticate" not in resp.headers
    finish = auth_body(BOB, None, passcode=code(clock), scope=DEV_PROJECT)
    resp = await client.post(AUTH, json=finish, headers={"Openstack-Auth-Receipt": receipt})
    assert resp.status == 201
    assert (await resp.json())["token"]["methods"] == ["password", "totp"]


async def test_receipt_expires_and_needs_its_user(client: Client, clock: FakeClock) -> None:
    """A receipt older than 300 s, or for another user, is refused."""
    resp = await client.post(AUTH, json=auth_body(BOB, BOB_PASSWORD))
    receipt = resp.headers["Openstack-Auth-Receipt"]
    finish = auth_body(ALICE, None, passcode=code(clock))
    resp = await client.post(AUTH, json=finish, headers={"Openstack-Auth-Receipt": receipt})
    assert resp.status == 404
    clock.advance(301)
    finish = auth_body(BOB, None, passcode=code(clock))
    resp = await client.post(AUTH, json=finish, headers={"Openstack-Auth-Receipt": receipt})
    assert resp.status == 404


async def test_mfa_combined_flow(client: Client, clock: FakeClock) -> None:
    """Password and TOTP in one request log an MFA user straight in."""
    body = auth_body(BOB, BOB_PASSWORD, passcode=code(clock), scope=DEV_PROJECT)
    resp = await client.post(AUTH, json=body)
    assert resp.status == 201
    assert (await resp.json())["token"]["methods"] == ["password", "totp"]


async def test_wrong_totp_is_401_without_receipt(client: Client, clock: FakeClock) -> None:
    """A wrong passcode with the right password gets the generic 401."""
    wrong = "000000" if code(clock) != "000000" else "111111"
    resp = await client.post(AUTH, json=auth_body(BOB, BOB_PASSWORD, passcode=wrong))
    assert resp.status == 401
    assert await resp.json() == UNAUTHORIZED_BODY
    assert "Openstack-Auth-Receipt" not in resp.headers


async def test_reused_code_rejected(client: Client, clock: FakeClock) -> None:
    """A TOTP code works once; the previous window's code works; the next step's code works."""
    body = auth_body(BOB, BOB_PASSWORD, passcode=code(clock))
    assert (await client.post(AUTH, json=body)).status == 201
    assert (await client.post(AUTH, json=body)).status == 401
    previous = auth_body(BOB, BOB_PASSWORD, passcode=code(clock, -30))
    assert (await client.post(AUTH, json=previous)).status == 201
    clock.advance(30)
    fresh = auth_body(BOB, BOB_PASSWORD, passcode=code(clock))
    assert (await client.post(AUTH, json=fresh)).status == 201
    stale = auth_body(BOB, BOB_PASSWORD, passcode=code(clock, -60))
    assert (await client.post(AUTH, json=stale)).status == 401


async def test_reuse_totp_option(make_client: MakeClient, clock: FakeClock) -> None:
    """With reuse_totp the same code is accepted twice, like stock Keystone."""
    client = await make_client(reuse_totp=True)
    body = auth_body(BOB, BOB_PASSWORD, passcode=code(clock))
    assert (await client.post(AUTH, json=body)).status == 201
    assert (await client.post(AUTH, json=body)).status == 201


async def test_mfa_option_makes_alice_need_totp(make_client: MakeClient,
                                                clock: FakeClock) -> None:
    """With mfa=True alice needs password+TOTP too."""
    client = await make_client(mfa=True)
    resp = await client.post(AUTH, json=auth_body())
    assert resp.status == 401
    assert "Openstack-Auth-Receipt" in resp.headers
    await login(client, passcode=code(clock))


async def test_auto_enable_mfa_is_ignored_but_counted(client: Client) -> None:
    """auto_enable_mfa never creates a secret; it only shows up in the stats."""
    resp = await client.post(AUTH, json=auth_body(auto_enable_mfa=True))
    assert resp.status == 201
    assert "mfa_secret" not in await resp.text()
    assert (await stats(client))["identity"]["auto_enable_mfa"] == 1


async def test_lockout_after_n_failures(make_client: MakeClient, clock: FakeClock) -> None:
    """After N failed logins even the right password is refused until the lock expires."""
    client = await make_client(lockout_attempts=3, lockout_seconds=60)
    for _ in range(3):
        assert (await client.post(AUTH, json=auth_body(password="wrong"))).status == 401
    resp = await client.post(AUTH, json=auth_body())
    assert resp.status == 401
    message = (await resp.json())["error"]["message"]
    assert message == f"The account is locked for user: {ALICE_ID}."
    clock.advance(61)
    await login(client)


async def test_success_resets_failure_count(make_client: MakeClient) -> None:
    """Failures must be consecutive: a good login in between resets the count."""
    client = await make_client(lockout_attempts=2)
    assert (await client.post(AUTH, json=auth_body(password="wrong"))).status == 401
    await login(client)
    assert (await client.post(AUTH, json=auth_body(password="wrong"))).status == 401
    await login(client)


async def test_token_expires_on_fake_clock(client: Client, clock: FakeClock) -> None:
    """A token works until token_ttl passes on the injected clock, then gets 401."""
    token = await login(client, scope=DEV_PROJECT)
    clock.advance(14399)
    assert (await get(client, VMS, token)).status == 200
    clock.advance(1)
    resp = await get(client, VMS, token)
    assert resp.status == 401
    assert await resp.json() == UNAUTHORIZED_BODY


async def test_short_token_ttl(make_client: MakeClient, clock: FakeClock) -> None:
    """token_ttl sets the lifetime written in expires_at."""
    client = await make_client(token_ttl=20)
    token = await login(client)
    state = client.app[SIM_STATE]
    issued = state.tokens.get(token, clock())
    assert issued is not None
    assert issued.expires_at == clock() + 20


async def test_resources_401_and_403(client: Client) -> None:
    """No or unknown token is 401; a token of the wrong scope is 403; other paths 404."""
    assert (await get(client, VMS, None)).status == 401
    assert (await get(client, VMS, "gAAAAAnope")).status == 401
    account = await login(client, scope="account")
    project = await login(client, scope=DEV_PROJECT)
    resp = await get(client, VMS, account)
    assert resp.status == 403
    assert (await resp.json())["error"]["title"] == "Forbidden"
    assert (await get(client, "/api/v2/identity/projects", project)).status == 403
    resp = await get(client, "/api/v2/nothing/here", project)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == 404


async def test_vm_crud_stays_in_its_project(client: Client) -> None:
    """VMs are listed, created, fetched and deleted per project, on both VM paths."""
    dev = await login(client, scope=DEV_PROJECT)
    prod = await login(client, scope=PROD_PROJECT)
    resp = await get(client, VMS, dev)
    vms = await resp.json()
    assert resp.headers["X-Simulator-Scope"] == f"project:{DEV_PROJECT}"
    assert [vm["name"] for vm in vms] == ["dev-web-1", "dev-db-1"]
    assert all(vm["project"] == {"id": DEV_PROJECT_ID, "name": DEV_PROJECT} for vm in vms)
    resp = await client.post(VMS, json={"name": "new"}, headers={"X-Auth-Token": dev})
    assert resp.status == 201
    vm = await resp.json()
    assert vm["name"] == "new"
    assert vm["project_id"] == DEV_PROJECT_ID
    assert (await get(client, f"/api/v2/vms/{vm['id']}", dev)).status == 200
    assert (await get(client, f"{VMS}/{vm['id']}", prod)).status == 404
    resp = await client.delete(f"{VMS}/{vm['id']}", headers={"X-Auth-Token": dev})
    assert resp.status == 204
    assert (await get(client, f"{VMS}/{vm['id']}", dev)).status == 404
    resp = await client.post(VMS, json={}, headers={"X-Auth-Token": dev})
    assert resp.status == 400


async def test_account_listings(client: Client, clock: FakeClock) -> None:
    """Account tokens list the account's projects, users and the caller's own projects."""
    token = await login(client, scope="account")
    resp = await get(client, "/api/v2/identity/projects", token)
    assert [p["name"] for p in (await resp.json())["projects"]] == [DEV_PROJECT, PROD_PROJECT]
    resp = await get(client, "/api/v2/identity/users", token)
    assert {u["name"] for u in (await resp.json())["users"]} == {ALICE, BOB}
    bob = await login(client, user=BOB, password=BOB_PASSWORD, passcode=code(clock))
    resp = await get(client, "/api/v2/identity/users/myself/projects", bob)
    assert [p["name"] for p in (await resp.json())["projects"]] == [DEV_PROJECT]


async def test_validate_and_revoke_token(client: Client) -> None:
    """GET validates a subject token (200/404), DELETE revokes it (204)."""
    caller = await login(client)
    subject = await login(client, scope=DEV_PROJECT)
    headers = {"X-Auth-Token": caller, "X-Subject-Token": subject}
    resp = await client.get(AUTH, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["token"]["project"]["name"] == DEV_PROJECT
    assert resp.headers["X-Subject-Token"] == subject
    bad = {"X-Auth-Token": caller, "X-Subject-Token": "gAAAAAnope"}
    assert (await client.get(AUTH, headers=bad)).status == 404
    assert (await client.get(AUTH, headers={**headers, "X-Auth-Token": "x"})).status == 401
    assert (await client.delete(AUTH, headers=headers)).status == 204
    assert (await client.get(AUTH, headers=headers)).status == 404
    assert (await get(client, VMS, subject)).status == 401


async def test_sim_revoke_revokes_everything(client: Client) -> None:
    """POST /_sim/revoke invalidates every token issued so far, not later ones."""
    tokens = [await login(client), await login(client, scope=DEV_PROJECT)]
    resp = await client.post("/_sim/revoke")
    assert await resp.json() == {"revoked": 2}
    assert (await get(client, VMS, tokens[1])).status == 401
    assert (await get(client, VMS, await login(client, scope=DEV_PROJECT))).status == 200


async def test_outage_blocks_identity_only(client: Client, clock: FakeClock) -> None:
    """During an outage identity answers 503 + Retry-After while resources keep working."""
    token = await login(client, scope=DEV_PROJECT)
    resp = await client.post("/_sim/outage", params={"seconds": "30"})
    assert resp.status == 200
    assert (await resp.json())["seconds"] == 30
    resp = await client.post(AUTH, json=auth_body())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "30"
    assert (await resp.json())["error"]["code"] == 503
    assert (await get(client, VMS, token)).status == 200
    clock.advance(29.5)
    assert (await client.post(AUTH, json=auth_body())).headers["Retry-After"] == "1"
    clock.advance(0.5)
    await login(client)
    assert (await stats(client))["identity"]["outage"] == 2
    assert (await client.post("/_sim/outage", params={"seconds": "x"})).status == 400


async def test_password_change_revokes_user_tokens(client: Client, clock: FakeClock) -> None:
    """POST /_sim/password sets a new password and revokes only that user's tokens."""
    alice = await login(client, scope=DEV_PROJECT)
    bob = await login(client, user=BOB, password=BOB_PASSWORD, passcode=code(clock),
                      scope=DEV_PROJECT)
    resp = await client.post("/_sim/password", json={"user": ALICE, "password": "new-pass"})
    assert await resp.json() == {"user": {"id": ALICE_ID, "name": ALICE}, "revoked": 1}
    assert (await get(client, VMS, alice)).status == 401
    assert (await get(client, VMS, bob)).status == 200
    assert (await client.post(AUTH, json=auth_body())).status == 401
    await login(client, password="new-pass")
    resp = await client.post("/_sim/password", json={"user": "nobody", "password": "x"})
    assert resp.status == 404


async def test_stats_count_kinds_without_tokens(client: Client, clock: FakeClock) -> None:
    """Stats count identity kinds, scopes and resource statuses, never exposing a token."""
    account = await login(client, scope="account")
    await client.post(AUTH, json=rescope_body(account, DEV_PROJECT))
    resp = await client.post(AUTH, json=auth_body(BOB, BOB_PASSWORD))
    finish = auth_body(BOB, None, passcode=code(clock))
    headers = {"Openstack-Auth-Receipt": resp.headers["Openstack-Auth-Receipt"]}
    await client.post(AUTH, json=finish, headers=headers)
    await client.post(AUTH, json=auth_body(password="wrong"))
    await get(client, "/api/v2/identity/projects", account)
    await get(client, VMS, account)
    await get(client, VMS, None)
    text = await (await client.get("/_sim/stats")).text()
    assert account not in text
    assert "gAAAA" not in text
    counters = json.loads(text)
    assert counters["identity"] == {
        "requests": 5, "password": 3, "totp_receipt": 1, "token": 1, "issued": 3,
        "receipts": 1, "failures": 1, "outage": 0, "auto_enable_mfa": 0, "validations": 0,
        "revocations": 0}
    assert counters["scopes"] == {f"account:{DEFAULT_ACCOUNT}": 2, f"project:{DEV_PROJECT}": 1}
    assert counters["resources"] == {"requests": 3, "by_status": {"200": 1, "401": 1, "403": 1},
                                     "distinct_tokens": 1}
    assert (await client.post("/_sim/reset-stats")).status == 200
    after = await stats(client)
    assert after["identity"]["requests"] == 0
    assert after["resources"]["requests"] == 0


USERS_TOML = """
[[accounts]]
name = "acme"

[[accounts.projects]]
name = "web"
id = "0123456789abcdef0123456789abcdef"

[[accounts.projects]]
name = "data"

[[accounts.users]]
name = "carol"
password = "carol-pass"
projects = ["web"]

[[accounts.users]]
name = "dave"
password = "dave-pass"
totp_secret = "ZCOMPUTEPROXYDEMOSECRETBASE32AAA"
mfa = true
projects = ["web", "data"]
"""


async def test_users_file_toml(make_client: MakeClient, tmp_path: Path,
                               clock: FakeClock) -> None:
    """A TOML users file replaces the built-in directory, with its projects and MFA users."""
    path = tmp_path / "users.toml"
    path.write_text(USERS_TOML)
    client = await make_client(users_file=path)
    carol = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "carol", "password": "carol-pass", "domain": {"name": "acme"}}}},
        "scope": {"project": {"id": "0123456789abcdef0123456789abcdef"}}}}
    resp = await client.post(AUTH, json=carol)
    assert resp.status == 201
    assert (await resp.json())["token"]["project"]["name"] == "web"
    carol["auth"]["scope"] = {"project": {"name": "data", "domain": {"name": "acme"}}}
    assert (await client.post(AUTH, json=carol)).status == 401
    dave = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "dave", "password": "dave-pass", "domain": {"name": "acme"}}}}}}
    assert "Openstack-Auth-Receipt" in (await client.post(AUTH, json=dave)).headers
    assert (await client.post(AUTH, json=auth_body())).status == 401  # no built-in alice


async def test_users_file_json(make_client: MakeClient, tmp_path: Path) -> None:
    """A .json users file with the same tree works too, with stable derived ids."""
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"accounts": [{
        "name": "solo", "projects": [{"name": "p"}],
        "users": [{"name": "u", "password": "pw", "projects": ["p"]}]}]}))
    client = await make_client(users_file=path)
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "u", "password": "pw", "domain": {"name": "solo"}}}},
        "scope": {"project": {"name": "p", "domain": {"name": "solo"}}}}}
    resp = await client.post(AUTH, json=body)
    assert resp.status == 201
    project_id = (await resp.json())["token"]["project"]["id"]
    again = await make_client(users_file=path)
    resp = await again.post(AUTH, json=body)
    assert (await resp.json())["token"]["project"]["id"] == project_id


@pytest.mark.parametrize(("content", "message"), [
    ("accounts = 3", "'accounts' must be a list"),
    ("[[accounts]]\nname = 'a'\n[[accounts.users]]\nname = 'u'\n", "'password'"),
    ("[[accounts]]\nname = 'a'\n[[accounts.users]]\nname = 'u'\npassword = 'p'\n"
     "projects = ['x']\n", "unknown project 'x'"),
    ("[[accounts]]\nname = 'a'\n[[accounts.users]]\nname = 'u'\npassword = 'p'\nmfa = true\n",
     "needs totp_secret"),
    ("[[accounts]]\nname = 'a'\n[[accounts.users]]\nname = 'u'\npassword = 'p'\n"
     "totp_secret = 'SHORT'\n", "112 bits"),
    ("not toml [", "users.toml"),
])
def test_users_file_errors(tmp_path: Path, content: str, message: str) -> None:
    """A malformed users file raises UsersFileError naming the file and the problem."""
    path = tmp_path / "users.toml"
    path.write_text(content)
    with pytest.raises(UsersFileError, match=re.escape(message)) as info:
        create_app(SimulatorOptions(users_file=path))
    assert str(path) in str(info.value)


def test_arguments_round_trip() -> None:
    """add_arguments and options_from_args map the flags onto SimulatorOptions."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = options_from_args(parser.parse_args([]))
    assert defaults == SimulatorOptions()
    ns = parser.parse_args(["--token-ttl", "60", "--mfa", "--users-file", "u.toml",
                            "--lockout", "3", "--lockout-seconds", "10", "--reuse-totp"])
    options = options_from_args(ns)
    assert options == SimulatorOptions(token_ttl=60.0, mfa=True, users_file=Path("u.toml"),
                                       lockout_attempts=3, lockout_seconds=10.0,
                                       reuse_totp=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lockout", "-1"])


async def test_serve_listens_on_loopback() -> None:
    """serve() starts a real server on an ephemeral port that answers logins."""
    runner = await serve(SimulatorOptions(), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with ClientSession() as session:
            url = f"http://{host}:{port}{AUTH}"
            async with session.post(url, json=auth_body(scope=DEV_PROJECT)) as resp:
                assert resp.status == 201
                assert resp.headers["x-subject-token"].startswith("gAAAA")
    finally:
        await runner.cleanup()


def test_package_is_standalone() -> None:
    """The simulator imports nothing from `proxy` outside `proxy.simulator`."""
    package = Path(simulator.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name == "proxy.simulator" or name.startswith("proxy.simulator.") or (
                    not name.startswith("proxy")), f"{source.name} imports {name}"
