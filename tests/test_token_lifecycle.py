"""Token lifecycle rows 32-45 of bug-cases.md, against a scripted Keystone (K) and a recording
upstream (U) on loopback, sharing a fake clock with the proxy (P)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from proxy import simulator
from proxy.clock import Clock
from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config, sim_state
from tests.doubles import FakeClock, RecordingUpstream, ScriptedKeystone, at

START = at("2026-12-03T16:00:00Z")
Rig = tuple[ScriptedKeystone, RecordingUpstream, TestServer]
RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
def rig(aiohttp_server: Any, start_proxy: ProxyFactory) -> RigFactory:
    """Start K, U and P: `k, u, p = await rig(clock, lifetimes=[90, 3600], env={...})`."""

    async def start(clock: FakeClock, *, proxy_clock: Clock | None = None,
                    env: dict[str, str] | None = None, routes: tuple[str, ...] = ("/**=account",),
                    **keystone: Any) -> Rig:
        k = ScriptedKeystone(clock, **keystone)
        u = RecordingUpstream(clock)
        k_server = await aiohttp_server(k.app())
        u_server = await aiohttp_server(u.app())
        config = proxy_config(base_url(u_server), routes=routes, env={
            "ZCOMPUTE_IDENTITY_URL": f"{base_url(k_server)}/v3/auth/tokens", **(env or {})})
        return k, u, await start_proxy(config, clock=proxy_clock or clock)

    return start


async def _get(proxy: TestServer, path: str = "/api/v2/x",
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client, \
            client.get(f"{base_url(proxy)}{path}", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_row32_short_lived_token_is_not_forwarded(rig: RigFactory) -> None:
    """K hands out a token with 90 s left while M = 300 s: P logs in again and U sees TOK-B."""
    clock = FakeClock(START)
    k, u, p = await rig(clock, lifetimes=[90, 3600], env={"ZCOMPUTE_RENEW_MARGIN": "300"})
    assert (await _get(p))[0] == 200
    assert k.logins == 2
    assert u.tokens == ["TOK-B"]
    for token, when in u.seen:
        assert token is not None
        assert k.expiry[token] - when >= 300


@pytest.mark.parametrize("suffix", ["Z", "+00:00"])
async def test_row33_renewal_before_expiry_and_never_expired(rig: RigFactory,
                                                             suffix: str) -> None:
    """At 16:56 for a 17:00 expiry P renews before forwarding; at 17:01 no expired token."""
    clock = FakeClock(START)
    k, u, p = await rig(clock, suffix=suffix)
    assert (await _get(p))[0] == 200
    clock.wall_now, clock.mono_now = at("2026-12-03T16:56:00Z"), clock.mono_now + 56 * 60
    assert (await _get(p))[0] == 200
    assert k.logins == 2
    assert u.tokens == ["TOK-A", "TOK-B"]
    clock.advance(5 * 60)  # 17:01
    assert (await _get(p))[0] == 200
    for token, when in u.seen:
        assert token is not None
        assert k.expiry[token] > when


async def test_row34_reauth_after_expiry_uses_only_the_password(rig: RigFactory) -> None:
    """After TOK-A expired, the new login carries only the password method and no token."""
    clock = FakeClock(START)
    k, u, p = await rig(clock)
    await _get(p)
    clock.advance(3601)
    await _get(p)
    second = k.calls[1]["auth"]["identity"]
    assert second["methods"] == ["password"]
    assert "token" not in second
    assert "x-auth-token" not in {name.lower() for name in k.headers_seen[1]}
    assert u.tokens == ["TOK-A", "TOK-B"]


async def test_row36_concurrent_requests_at_expiry_share_one_login(rig: RigFactory) -> None:
    """50 concurrent requests after expiry cause exactly one login; all reach U with TOK-B."""
    clock = FakeClock(START)
    k, u, p = await rig(clock, delay=0.05)
    await _get(p)
    clock.advance(3601)
    results = await asyncio.gather(*(_get(p) for _ in range(50)))
    assert {status for status, _ in results} == {200}
    assert k.logins == 2
    assert u.tokens[1:] == ["TOK-B"] * 50


async def test_row36_waiters_share_a_failed_attempt_then_recover(rig: RigFactory) -> None:
    """K fails the first login with 500: all waiters get one 503, the next request logs in."""
    clock = FakeClock(START)
    k, u, p = await rig(clock, delay=0.05, failures={1: 500})
    results = await asyncio.gather(*(_get(p) for _ in range(50)))
    assert {status for status, _ in results} == {503}
    assert results[0][1]["error"]["code"] == "identity_unavailable"
    assert len(k.calls) == 1
    clock.advance(2)  # past the first backoff step (at most 1 s)
    assert (await _get(p))[0] == 200
    assert len(k.calls) == 2
    assert u.tokens == ["TOK-A"]


async def test_row36_backoff_answers_503_with_retry_after(rig: RigFactory) -> None:
    """Inside the backoff P answers 503 with Retry-After at once, without calling K."""
    clock = FakeClock(START)
    k, _u, p = await rig(clock, failures={1: 503, 2: 503})
    await _get(p)
    async with aiohttp.ClientSession() as client, \
            client.get(f"{base_url(p)}/api/v2/x") as resp:
        assert resp.status == 503
        assert 1 <= int(resp.headers["Retry-After"]) <= 2
    assert len(k.calls) == 1


async def test_row39_revoked_token_is_renewed_and_request_replayed(rig: RigFactory) -> None:
    """U starts refusing TOK-A: P drops it, logs in once, replays the GET, and keeps TOK-B."""
    clock = FakeClock(START)
    k, u, p = await rig(clock)
    assert (await _get(p))[0] == 200
    clock.advance(300)
    u.refuse.add("TOK-A")
    assert (await _get(p))[0] == 200
    assert (await _get(p))[0] == 200
    assert k.logins == 2
    assert u.tokens == ["TOK-A", "TOK-A", "TOK-B", "TOK-B"]


async def test_row39_upstream_refusing_every_token_cannot_drive_logins(rig: RigFactory) -> None:
    """If U refuses every token, clients get 401 and P renews at most once per 10 s."""
    clock = FakeClock(START)
    k, u, p = await rig(clock)
    u.refuse_all = True
    statuses = []
    for _ in range(20):
        statuses.append((await _get(p))[0])
        clock.advance(0.25)
    assert set(statuses) == {401}
    assert k.logins == 2  # the first login, and one renewal after the first 401
    clock.advance(10)
    await _get(p)
    assert k.logins == 3


async def test_row39_late_401_for_an_old_token_keeps_the_new_one(rig: RigFactory) -> None:
    """A 401 for a token that is no longer cached does not discard the current token."""
    clock = FakeClock(START)
    k, _u, p = await rig(clock)
    await _get(p)
    manager = p.app[_tokens_key()]
    from proxy.scope import ACCOUNT  # noqa: PLC0415

    old = await manager.get(ACCOUNT)
    clock.advance(3601)
    new = await manager.get(ACCOUNT)
    assert new is not old
    assert manager.invalidate(old) is True  # caller may retry: with the newer token
    assert await manager.get(ACCOUNT) is new
    assert k.logins == 2


def _tokens_key() -> Any:
    from proxy.app import TOKENS  # noqa: PLC0415

    return TOKENS


@pytest.mark.parametrize("offset_minutes", [58, -10])
async def test_row40_clock_skew_does_not_matter(rig: RigFactory, offset_minutes: int) -> None:
    """P's clock 58 min ahead: one login for 10 requests; 10 min behind: renewed by K's 12:57."""
    k_clock = FakeClock(at("2026-12-03T12:00:00Z"))
    p_clock = FakeClock(k_clock.wall_now + offset_minutes * 60)
    k, u, p = await rig(k_clock, proxy_clock=p_clock)
    if offset_minutes > 0:
        for _ in range(10):
            assert (await _get(p))[0] == 200
            k_clock.advance(6)
            p_clock.advance(6)
        assert k.logins == 1
        return
    assert (await _get(p))[0] == 200
    k_clock.advance(57 * 60)
    p_clock.advance(57 * 60)  # P's local 12:47 = K's 12:57
    assert (await _get(p))[0] == 200
    assert k.logins == 2
    for token, when in u.seen:
        assert token is not None
        assert k.expiry[token] > when


async def test_row41_domain_scoped_token_without_project_or_catalog(rig: RigFactory) -> None:
    """A domain-scoped token (no project, no catalog) is used as is; no 500."""
    k, u, p = await rig(FakeClock(START))
    status, _ = await _get(p, "/api/v2/identity/users")
    assert status == 200
    assert u.tokens == ["TOK-A"]
    assert k.calls[0]["auth"]["scope"] == {"domain": {"name": simulator.DEFAULT_ACCOUNT}}


async def test_row43_wrong_password_never_locks_the_account(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """With lockout after 3 failures, 20 requests in 10 s cost exactly 1 failed login."""
    sim = await start_simulator(lockout_attempts=3)
    config = proxy_config(base_url(sim), env={"ZCOMPUTE_PASSWORD": "P@ss-9-wrong"})
    proxy = await start_proxy(config)
    with capture_logs() as logs:
        results = await asyncio.gather(*(_get(proxy, "/api/v2/compute/vms") for _ in range(20)))
    assert {status for status, _ in results} == {502}
    assert all("rejected by identity" in body["error"]["message"] for _, body in results)
    assert sim_state(sim).stats.snapshot()["identity"]["failures"] == 1
    assert "P@ss-9-wrong" not in repr(logs) + repr(results)
    async with aiohttp.ClientSession() as client, client.post(
            f"{base_url(sim)}/api/v2/identity/auth", json=_password_auth()) as resp:
        assert resp.status == 201  # the right password still works: not locked


def _password_auth() -> dict[str, Any]:
    user = {"name": simulator.ALICE, "domain": {"name": simulator.DEFAULT_ACCOUNT},
            "password": simulator.ALICE_PASSWORD}
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                     "scope": {"domain": {"name": simulator.DEFAULT_ACCOUNT}}}}


@pytest.mark.parametrize(("mode", "calls"), [("combined", 1), ("receipt", 2)])
async def test_row44_mfa_one_request_and_receipt_flows(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, mode: str,
        calls: int) -> None:
    """S1: password+totp in one call; S2: receipt then totp, and the receipt is no failure."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim), env={
        "ZCOMPUTE_USERNAME": simulator.BOB, "ZCOMPUTE_PASSWORD": simulator.BOB_PASSWORD,
        "ZCOMPUTE_TOTP_SECRET": simulator.DEFAULT_TOTP_SECRET, "ZCOMPUTE_MFA": mode}))
    assert (await _get(proxy, "/api/v2/identity/users"))[0] == 200
    identity = sim_state(sim).stats.snapshot()["identity"]
    assert identity["password"] + identity["totp_receipt"] == calls
    assert identity["receipts"] == calls - 1
    assert identity["failures"] == 0


async def test_row45_refused_project_scope_is_surfaced_without_a_loop(rig: RigFactory) -> None:
    """K refuses a project scope with 400: the error names the project; no retry loop."""
    k, _u, p = await rig(FakeClock(START), routes=(), refuse_project_names=True)
    first = await _get(p, "/api/v2/compute/vms")
    calls = len(k.calls)
    for _ in range(5):
        status, body = await _get(p, "/api/v2/compute/vms")
        assert status == 502
        assert body["error"]["scope"] == f"project:{simulator.DEV_PROJECT}"
    assert first[0] == 502
    assert len(k.calls) == calls  # nothing more after the first failure


async def test_row45_project_by_id_is_scoped_by_id_only(rig: RigFactory) -> None:
    """`X-Zcompute-Project: id:abc123` sends `{"project": {"id": "abc123"}}` and works."""
    k, u, p = await rig(FakeClock(START), routes=(), refuse_project_names=True)
    status, _ = await _get(p, "/api/v2/compute/vms", {"X-Zcompute-Project": "id:abc123"})
    assert status == 200
    assert k.calls[-1]["auth"]["scope"] == {"project": {"id": "abc123"}}
    assert u.tokens == ["TOK-B"]


async def test_row39_mass_revocation_gives_no_client_visible_401(rig: RigFactory) -> None:
    """All in-flight GETs refused at once: each is replayed with the one new token."""
    clock = FakeClock(START)
    k, u, p = await rig(clock, delay=0.05)
    assert (await _get(p))[0] == 200
    u.refuse.add("TOK-A")
    results = await asyncio.gather(*(_get(p) for _ in range(30)))
    assert {status for status, _ in results} == {200}
    assert k.logins == 2
    assert set(u.tokens) == {"TOK-A", "TOK-B"}


async def test_streamed_body_is_never_resent_after_a_401(rig: RigFactory) -> None:
    """A 401 after a streamed (over the replay limit) body: JSON 401, token renewed, no resend."""
    clock = FakeClock(START)
    k, u, p = await rig(clock)
    assert (await _get(p))[0] == 200
    u.refuse.add("TOK-A")
    async with aiohttp.ClientSession() as client, client.put(
            f"{base_url(p)}/api/v2/objects/big", data=b"x" * (100 * 1024)) as resp:
        body = await resp.json()
        assert resp.status == 401
    assert body["error"]["code"] == "token_rejected"
    assert "never sent twice" in body["error"]["message"]
    assert u.tokens == ["TOK-A", "TOK-A"]  # the PUT went once
    assert (await _get(p))[0] == 200
    assert u.tokens[-1] == "TOK-B"
    assert k.logins == 2


async def test_small_body_is_replayed_after_a_401(rig: RigFactory) -> None:
    """A body within the replay limit is sent again with the new token after a 401."""
    clock = FakeClock(START)
    _k, u, p = await rig(clock)
    assert (await _get(p))[0] == 200
    u.refuse.add("TOK-A")
    async with aiohttp.ClientSession() as client, client.post(
            f"{base_url(p)}/api/v2/compute/vms", json={"name": "web-1"}) as resp:
        assert resp.status == 200
    assert u.tokens == ["TOK-A", "TOK-A", "TOK-B"]


async def test_row39_second_revocation_within_10s_is_still_recovered(rig: RigFactory) -> None:
    """A token that worked and is then revoked is always renewed, even right after a renewal."""
    clock = FakeClock(START)
    k, u, p = await rig(clock)
    assert (await _get(p))[0] == 200
    u.refuse.add("TOK-A")
    assert (await _get(p))[0] == 200  # TOK-B
    clock.advance(3)
    u.refuse.add("TOK-B")
    assert (await _get(p))[0] == 200  # TOK-C, although the last renewal was 3 s ago
    assert u.tokens[-1] == "TOK-C"
    assert k.logins == 3


async def test_access_log_names_the_token_a_replay_used(rig: RigFactory) -> None:
    """After a 401 and a replay, the access line shows the new token's fingerprint."""
    from structlog.testing import capture_logs  # noqa: PLC0415

    from proxy.secret import fingerprint  # noqa: PLC0415

    clock = FakeClock(START)
    _k, u, p = await rig(clock)
    assert (await _get(p))[0] == 200
    u.refuse.add("TOK-A")
    with capture_logs() as logs:
        assert (await _get(p))[0] == 200
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["token"] == fingerprint("TOK-B")
