"""Row 46: no secret in any output. The whole flow runs at DEBUG in real `serve` processes
(MFA login as bob, background renewal, a 401 from the upstream, a failed login, refused
clients, a URL carrying `?token=abc123`), and every byte they print, every `/_proxy/*` body and
every error body is searched for every secret of the run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import simulator
from proxy.scrub import MAX_SCRUBBED_BODY
from proxy.secret import fingerprint
from tests.conftest import (
    ProxyFactory,
    SimulatorFactory,
    base_url,
    proxy_config,
    sim_state,
)
from tests.processes import free_port, running
from tests.rawhttp import RawRequest, RawUpstream, Responder

PASSWORD = "P@ss-9"
WRONG_PASSWORD = "Wr0ng-pw-77"
ACCESS_KEY = "row46-access-key-0123456789abcdefABCDEF"
WRONG_KEY = "not-the-key-row46-9876543210"
URL_SECRET = "abc123"
TOTP_STEP = 30
# An ISO-8601 time's fraction of a second: six digits that can equal a TOTP code by chance.
TIMESTAMP_FRACTION = re.compile(rb"\d\d:\d\d:\d\d\.$")
TOKEN_HEADERS = ("X-Subject-Token", "Openstack-Auth-Receipt")
AUTH = {"Proxy-Authorization": f"Bearer {ACCESS_KEY}"}
LONG = aiohttp.ClientTimeout(total=60)


@dataclass
class Run:
    """What one proxy process showed: the bodies to scan (its output is read at the end)."""

    url: str
    bodies: list[bytes] = field(default_factory=list)

    async def call(self, client: aiohttp.ClientSession, method: str, path: str,
                   headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, bytes]:
        """One request; keep the body if it is an admin answer or an error."""
        sent = AUTH if headers is None else headers
        async with client.request(method, self.url + path, headers=sent, timeout=LONG,
                                  **kwargs) as resp:
            body = await resp.read()
        if path.startswith("/_proxy/") or resp.status >= 400:
            self.bodies.append(body)
        return resp.status, body


async def _token_recorder(issued: set[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        response = await handler(request)
        issued.update(v for name in TOKEN_HEADERS if (v := response.headers.get(name)))
        return response

    return record


async def _simulator(aiohttp_server: Any, issued: set[str], **options: Any) -> TestServer:
    """The simulator with bob's password set to PASSWORD; every token it issues is recorded."""
    app = simulator.create_app(simulator.SimulatorOptions(**options))
    app.middlewares.insert(0, await _token_recorder(issued))
    server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as client, client.post(
            f"{base_url(server)}/_sim/password",
            json={"user": simulator.BOB, "password": PASSWORD}) as resp:
        assert resp.status == 200
    return server


def _env(sim: TestServer, secrets_dir: Path, password: str) -> dict[str, str]:
    files = {"password": password, "totp": simulator.DEFAULT_TOTP_SECRET, "key": ACCESS_KEY}
    for name, value in files.items():
        path = secrets_dir / f"{name}-{password}"
        path.write_text(value + "\n")
        path.chmod(0o600)
    return {"ZCOMPUTE_URL": base_url(sim), "ZCOMPUTE_USERNAME": simulator.BOB,
            "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
            "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT,
            "ZCOMPUTE_PASSWORD_FILE": str(secrets_dir / f"password-{password}"),
            "ZCOMPUTE_TOTP_SECRET_FILE": str(secrets_dir / f"totp-{password}"),
            "ZCOMPUTE_ACCESS_KEY_FILE": str(secrets_dir / f"key-{password}"),
            "ZCOMPUTE_LOG_LEVEL": "debug", "ZCOMPUTE_LOG_FORMAT": "json"}


async def _account_fingerprints(run: Run, client: aiohttp.ClientSession) -> set[str]:
    _status, body = await run.call(client, "GET", "/_proxy/status")
    return {row["fingerprint"] for row in json.loads(body)["tokens"] if row["scope"] == "account"}


async def _flow_renewal(run: Run, client: aiohttp.ClientSession, port: int) -> None:
    """Login (MFA receipt), both scopes, refused clients, then a background renewal."""
    status, _ = await run.call(client, "GET", f"/api/v2/compute/vms?token={URL_SECRET}&sig=zz")
    assert status == 200
    assert (await run.call(client, "GET", "/api/v2/identity/projects"))[0] == 200
    assert (await run.call(client, "POST", "/api/v2/compute/vms", json={"name": "web-9"}))[0] \
        < 300
    assert (await run.call(client, "GET", "/api/v2/compute/vms", {}))[0] == 407
    assert (await run.call(client, "GET", "/api/v2/compute/vms",
                           {"Proxy-Authorization": f"Bearer {WRONG_KEY}"}))[0] == 407
    assert (await run.call(client, "GET", "/api/v2/compute/vms",
                           {**AUTH, "Host": f"evil.example:{port}"}))[0] == 403
    assert (await run.call(client, "POST", "/_proxy/totp", json={"code": "000000"}))[0] == 400
    assert (await run.call(client, "POST", "/_proxy/reload"))[0] == 200
    assert (await run.call(client, "GET", "/_proxy/health"))[0] == 200
    first = await _account_fingerprints(run, client)
    deadline = time.monotonic() + 50
    while not (await _account_fingerprints(run, client)) - first:
        assert time.monotonic() < deadline, "the account token was never renewed"
        assert (await run.call(client, "GET", "/api/v2/compute/vms"))[0] == 200
        await asyncio.sleep(1)
    assert (await run.call(client, "GET", "/api/v2/compute/vms"))[0] == 200


async def _flow_401(run: Run, client: aiohttp.ClientSession, sim: TestServer) -> None:
    """A token the upstream revoked: 401, a new login, the request replayed."""
    assert (await run.call(client, "GET", "/api/v2/compute/vms"))[0] == 200
    async with client.post(f"{base_url(sim)}/_sim/revoke") as resp:
        assert resp.status == 200
    assert (await run.call(client, "GET", "/api/v2/compute/vms"))[0] == 200
    assert (await run.call(client, "GET", "/_proxy/status"))[0] == 200


async def _flow_failed_login(run: Run, client: aiohttp.ClientSession) -> None:
    """A wrong password: a latched login error, shown by requests, status and login."""
    for _ in range(2):
        status, body = await run.call(client, "GET", "/api/v2/compute/vms")
        assert status == 502
        assert json.loads(body)["error"]["code"] == "credentials_rejected"
    assert (await run.call(client, "POST", "/_proxy/login"))[0] == 502
    status, body = await run.call(client, "GET", "/_proxy/status")
    assert json.loads(body)["errors"]


def _codes(start: float, end: float) -> set[str]:
    """Every TOTP code of bob's secret from one step before the run to one step after."""
    totp = pyotp.TOTP(simulator.DEFAULT_TOTP_SECRET)
    first, last = int(start // TOTP_STEP) - 1, int(end // TOTP_STEP) + 1
    return {totp.at(step * TOTP_STEP) for step in range(first, last + 1)}


def _leaks(data: bytes, secrets: set[str], codes: set[str]) -> list[str]:
    """The secrets found in `data` (a code inside a timestamp's fraction is a coincidence)."""
    found = [s for s in secrets if s.encode() in data]
    for code in codes:
        for match in re.finditer(rb"(?<!\d)" + code.encode() + rb"(?!\d)", data):
            if not TIMESTAMP_FRACTION.search(data[max(0, match.start() - 9):match.start()]):
                found.append(f"TOTP code {code}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_row46_no_secret_in_any_output_at_debug(aiohttp_server: Any,
                                                      tmp_path: Path) -> None:
    """Password, TOTP secret and codes, tokens, receipts, access keys and a secret query value
    never appear in logs, admin answers or error bodies; tokens appear as fingerprints."""
    issued: set[str] = set()
    started = time.time()
    sim = await _simulator(aiohttp_server, issued, token_ttl=8)
    sim_401 = await _simulator(aiohttp_server, issued)
    ports = [free_port() for _ in range(3)]
    runs = [Run(f"http://127.0.0.1:{port}") for port in ports]
    envs = [_env(sim, tmp_path, PASSWORD), _env(sim_401, tmp_path, PASSWORD),
            _env(sim, tmp_path, WRONG_PASSWORD)]
    extra = [["--renew-margin", "2"], [], []]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(running(
            ["serve", "--listen", f"127.0.0.1:{port}", *more], f"{run.url}/_proxy/health", env))
            for port, run, env, more in zip(ports, runs, envs, extra, strict=True)]
        async with aiohttp.ClientSession() as client:
            await asyncio.gather(_flow_renewal(runs[0], client, ports[0]),
                                 _flow_401(runs[1], client, sim_401),
                                 _flow_failed_login(runs[2], client))
    codes = _codes(started, time.time())
    renewed, replayed = (sim_state(sim).stats.snapshot(), sim_state(sim_401).stats.snapshot())
    assert renewed["identity"]["totp_receipt"] == 1  # the first login followed a receipt
    assert renewed["identity"]["password"] >= 3  # that login, the renewal, the wrong password
    assert renewed["identity"]["failures"] >= 2
    assert replayed["resources"]["by_status"]["401"] == 1  # the revoked token, replayed once
    assert replayed["identity"]["password"] >= 2
    secrets = {PASSWORD, WRONG_PASSWORD, simulator.DEFAULT_TOTP_SECRET, ACCESS_KEY, WRONG_KEY,
               URL_SECRET, *issued}
    assert len(issued) >= 8  # logins, re-scopes, a renewal, a re-login, receipts
    for proc, run in zip(procs, runs, strict=True):
        output = proc.stdout_path.read_bytes() + proc.stderr_path.read_bytes()
        assert _leaks(output, secrets, codes) == [], run.url
        for body in run.bodies:
            assert _leaks(body, secrets, codes) == [], body[:300]
    logs = b"".join(p.stderr_path.read_bytes() for p in procs[:2])
    mine = {t for t in issued if fingerprint(t).encode() in logs}
    assert len(mine) >= 5  # every token the proxies got is logged by fingerprint only
    assert b"token=***&sig=***" in procs[0].stderr_path.read_bytes()


def _echo(status: str, padding: int = 0) -> Responder:
    """A raw upstream answering `status` with a body that echoes the X-Auth-Token it got."""

    async def respond(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        token = (request.headers("X-Auth-Token") or ["none"])[0]
        body = json.dumps({"error": {"message": f"token {token} is not valid here",
                                     "pad": "x" * padding}}).encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()

    return respond


@pytest.mark.parametrize("status", ["400 Bad Request", "401 Unauthorized", "403 Forbidden",
                                    "500 Internal Server Error"])
async def test_small_error_body_echoing_the_token_is_scrubbed(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory, status: str) -> None:
    """An upstream error answer that quotes our token reaches the client with the token's
    fingerprint instead, and a Content-Length that matches."""
    upstream = await RawUpstream(_echo(status)).start()
    try:
        sim = await start_simulator()
        proxy = await start_proxy(proxy_config(upstream.url, env={
            "ZCOMPUTE_IDENTITY_URL": f"{base_url(sim)}/api/v2/identity/auth"}))
        async with aiohttp.ClientSession() as client, \
                client.get(f"{base_url(proxy)}/api/v2/compute/vms") as resp:
            body = await resp.read()
            assert resp.status == int(status.split(maxsplit=1)[0])
            assert resp.headers["Content-Length"] == str(len(body))
        sent = {r.headers("X-Auth-Token")[0] for r in upstream.requests}
        assert sent
        for token in sent:
            assert token.encode() not in body
        assert f"<{fingerprint(upstream.requests[-1].headers('X-Auth-Token')[0])}>".encode() \
            in body
    finally:
        await upstream.close()


async def test_success_and_large_error_bodies_stream_untouched(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """Scrubbing never buffers: a 2xx body, or an error body over 64 KiB, passes byte for byte
    (SECURITY.md documents this limit)."""
    for status, padding in (("200 OK", 0), ("403 Forbidden", MAX_SCRUBBED_BODY)):
        upstream = await RawUpstream(_echo(status, padding)).start()
        try:
            sim = await start_simulator()
            proxy = await start_proxy(proxy_config(upstream.url, env={
                "ZCOMPUTE_IDENTITY_URL": f"{base_url(sim)}/api/v2/identity/auth"}))
            async with aiohttp.ClientSession() as client, \
                    client.get(f"{base_url(proxy)}/api/v2/compute/vms") as resp:
                body = await resp.read()
            (seen,) = upstream.requests
            assert seen.headers("X-Auth-Token")[0].encode() in body
        finally:
            await upstream.close()
