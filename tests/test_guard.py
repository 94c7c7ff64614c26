"""Who may use the proxy (proxy.guard): bug-case rows 49-52 and the guard's other checks,
against real servers on loopback with raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from proxy import simulator
from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config, sim_state
from tests.peers import Reply, exchange, listening_sockets, non_loopback_ipv4, request
from tests.processes import COMMAND, ROOT, clean_env, free_port, run, running
from tests.rawhttp import RawUpstream, json_reply
from tests.rawhttp import raw_exchange as _raw_exchange

BODY = b'{"servers": []}'
KEY = "k3y-for-the-guard-tests-0123456789abcdef"
EVIL = "https://evil.example"
CORS_STAR = ("Access-Control-Allow-Origin: *", "Access-Control-Allow-Credentials: true")
BASE_ENV = {
    "ZCOMPUTE_USERNAME": simulator.ALICE,
    "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
    "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT,
    "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD,
    "ZCOMPUTE_LOG_FORMAT": "json",
}


async def _proxy(start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
                 upstream: RawUpstream, **env: str) -> tuple[TestServer, TestServer]:
    """The simulator (identity only) and a proxy in front of the raw upstream."""
    sim = await start_simulator()
    config = proxy_config(upstream.url, env={
        "ZCOMPUTE_IDENTITY_URL": f"{base_url(sim)}/api/v2/identity/auth", **env})
    return sim, await start_proxy(config)


def _identity_calls(sim: TestServer) -> int:
    return int(sim_state(sim).stats.snapshot()["identity"]["requests"])


async def _get(port: int, target: str, host: str, *headers: tuple[str, str],
               method: str = "GET", body: bytes = b"", source: str | None = None) -> Reply:
    return await exchange(port, request(method, target, host, headers, body=body),
                          source=source)


async def test_row49_dns_rebinding_hosts(start_simulator: SimulatorFactory,
                                         start_proxy: ProxyFactory) -> None:
    """Foreign Host names get 403 with no login and no upstream call; loopback names pass."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        sim, proxy = await _proxy(start_simulator, start_proxy, upstream)
        port = proxy.port or 0
        for host in (f"evil.example:{port}", f"localhost.evil.example:{port}",
                     f"127.0.0.1.nip.io:{port}"):
            reply = await _get(port, "/v1/servers", host)
            assert (reply.status, reply.code) == (403, "host_not_allowed"), host
        assert upstream.requests == []
        assert _identity_calls(sim) == 0
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            reply = await _get(port, "/v1/servers", host)
            assert (reply.status, reply.body) == (200, BODY), host
        assert [r.target for r in upstream.requests] == ["/v1/servers"] * 3
        assert all(len(r.headers("X-Auth-Token")) == 1 for r in upstream.requests)
    finally:
        await upstream.close()


@pytest.mark.parametrize("host", [
    "localhost.:{port}", "localhost:{port}.evil.example", "evil.example:{port}:localhost",
    "[::1].evil.example:{port}", "localhost:", "127.0.0.2:{port}", "0.0.0.0:{port}",
    "[0:0:0:0:0:0:0:1]:{port}", "localhost@evil.example:{port}", "",
])
async def test_host_allow_list_is_anchored(start_simulator: SimulatorFactory,
                                           start_proxy: ProxyFactory, host: str) -> None:
    """Only exact loopback names pass: no suffix, prefix, trailing dot or other spelling."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        _sim, proxy = await _proxy(start_simulator, start_proxy, upstream)
        reply = await _get(proxy.port or 0, "/v1/servers", host.format(port=proxy.port))
        assert (reply.status, reply.code) == (403, "host_not_allowed")
        assert upstream.requests == []
    finally:
        await upstream.close()


async def test_configured_host_names_and_missing_host(start_simulator: SimulatorFactory,
                                                      start_proxy: ProxyFactory) -> None:
    """allowed_hosts adds names (any port, or exactly NAME:PORT); no Host at all is refused."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        _sim, proxy = await _proxy(start_simulator, start_proxy, upstream,
                                   ZCOMPUTE_ALLOWED_HOSTS="zcp.internal, Side.Car:8080")
        port = proxy.port or 0
        assert (await _get(port, "/v1/x", f"ZCP.internal:{port}")).status == 200
        assert (await _get(port, "/v1/x", "zcp.internal")).status == 200
        assert (await _get(port, "/v1/x", "side.car:8080")).status == 200
        assert (await _get(port, "/v1/x", "side.car:8081")).status == 403
        assert (await _get(port, "/v1/x", "LOCALHOST")).status == 200
        no_host = await exchange(port, request("GET", "/v1/x", None, version="HTTP/1.0"))
        assert (no_host.status, no_host.code) == (403, "host_not_allowed")
    finally:
        await upstream.close()


async def test_row50_cross_site_requests_are_refused(start_simulator: SimulatorFactory,
                                                     start_proxy: ProxyFactory) -> None:
    """A foreign Origin gets 403 without reaching U; no response ever carries a CORS allow
    header (the upstream's `*` is dropped); requests without Origin pass."""
    upstream = await RawUpstream(json_reply(BODY, extra=CORS_STAR)).start()
    try:
        sim, proxy = await _proxy(start_simulator, start_proxy, upstream)
        port, host = proxy.port or 0, f"127.0.0.1:{proxy.port}"
        post = await _get(port, "/v1/servers", host, ("Origin", EVIL),
                          ("Content-Type", "text/plain"), method="POST", body=b'{"name": "x"}')
        get = await _get(port, "/v1/servers", host, ("Origin", EVIL))
        assert (post.status, post.code) == (403, "origin_not_allowed")
        assert (get.status, get.code) == (403, "origin_not_allowed")
        assert upstream.requests == []
        assert _identity_calls(sim) == 0
        cli = await _get(port, "/v1/servers", host, ("User-Agent", "curl/8"))
        assert (cli.status, cli.body) == (200, BODY)
        for reply in (post, get, cli):
            assert not [k for k, _ in reply.header_lines if k.lower().startswith("access-control")]
    finally:
        await upstream.close()


@pytest.mark.parametrize(("headers", "status"), [
    ((("Sec-Fetch-Site", "cross-site"),), 403),
    ((("Sec-Fetch-Site", "same-site"),), 403),
    ((("Sec-Fetch-Site", "same-origin"),), 200),
    ((("Sec-Fetch-Site", "none"),), 200),
    ((("Origin", "null"),), 403),
    ((("Origin", "http://localhost:3000"),), 403),
    ((("Origin", "http://127.0.0.1:{port}"), ("Sec-Fetch-Site", "same-origin")), 200),
    ((("Origin", "http://evil.example"), ("Access-Control-Request-Method", "PUT")), 403),
])
async def test_browser_requests_by_fetch_metadata(start_simulator: SimulatorFactory,
                                                  start_proxy: ProxyFactory,
                                                  headers: tuple[tuple[str, str], ...],
                                                  status: int) -> None:
    """Cross-site and same-site fetches, opaque and foreign origins are refused; the proxy's
    own origin (its page under /_proxy/) and user navigations pass."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        _sim, proxy = await _proxy(start_simulator, start_proxy, upstream)
        port = proxy.port or 0
        filled = tuple((k, v.format(port=port)) for k, v in headers)
        method = "OPTIONS" if any(k.startswith("Access-Control") for k, _ in filled) else "GET"
        reply = await _get(port, "/v1/servers", f"127.0.0.1:{port}", *filled, method=method)
        assert reply.status == status
        assert len(upstream.requests) == (status == 200)
    finally:
        await upstream.close()


async def test_allow_listed_origin_passes_with_the_upstreams_cors(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """An allow-listed Origin (and its preflight) is forwarded; the upstream's CORS headers
    reach it, while the same answer to another client loses them."""
    upstream = await RawUpstream(json_reply(BODY, extra=(
        "Access-Control-Allow-Origin: http://localhost:3000",))).start()
    try:
        _sim, proxy = await _proxy(start_simulator, start_proxy, upstream,
                                   ZCOMPUTE_ALLOWED_ORIGINS="http://localhost:3000")
        port, host = proxy.port or 0, f"localhost:{proxy.port}"
        origin = ("Origin", "http://localhost:3000")
        preflight = await _get(port, "/v1/servers", host, origin,
                               ("Access-Control-Request-Method", "PUT"), method="OPTIONS")
        real = await _get(port, "/v1/servers", host, origin, ("Sec-Fetch-Site", "same-site"))
        plain = await _get(port, "/v1/servers", host)
        assert (preflight.status, real.status, plain.status) == (200, 200, 200)
        assert real.headers("Access-Control-Allow-Origin") == ["http://localhost:3000"]
        assert plain.headers("Access-Control-Allow-Origin") == []
        assert [r.request_line.split()[0] for r in upstream.requests] == ["OPTIONS", "GET", "GET"]
    finally:
        await upstream.close()


async def test_admin_endpoints_are_guarded_too(start_simulator: SimulatorFactory,
                                               start_proxy: ProxyFactory) -> None:
    """A cross-site POST to /_proxy/login is refused before the handler: no login happens."""
    sim = await start_simulator()
    proxy = await start_proxy(proxy_config(base_url(sim)))
    port = proxy.port or 0
    login = await _get(port, "/_proxy/login", f"127.0.0.1:{port}", ("Origin", EVIL),
                       method="POST")
    status = await _get(port, "/_proxy/status", f"evil.example:{port}")
    assert (login.status, login.code) == (403, "origin_not_allowed")
    assert (status.status, status.code) == (403, "host_not_allowed")
    assert _identity_calls(sim) == 0


@pytest.mark.parametrize(("line", "status", "code"), [
    ("GET http://evil.example/v1/x HTTP/1.1", 400, "bad_request"),
    ("GET http://127.0.0.1:{port}/_proxy/status HTTP/1.1", 400, "bad_request"),
    ("CONNECT evil.example:443 HTTP/1.1", 405, "method_not_allowed"),
    ("OPTIONS * HTTP/1.1", 400, "bad_request"),
    ("GET /v1/a#/../../evil HTTP/1.1", 400, "bad_request"),
])
async def test_not_an_open_proxy(start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
                                 line: str, status: int, code: str) -> None:
    """Absolute-form targets, CONNECT, `*` and fragments are refused; nothing reaches any
    upstream."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        sim, proxy = await _proxy(start_simulator, start_proxy, upstream)
        data = f"{line.format(port=proxy.port)}\r\nHost: 127.0.0.1:{proxy.port}\r\n\r\n"
        reply = await exchange(proxy.port or 0, data.encode())
        assert (reply.status, reply.code) == (status, code)
        assert upstream.requests == []
        assert _identity_calls(sim) == 0
    finally:
        await upstream.close()


async def test_access_key_is_required_and_never_forwarded(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """With a key, requests need `Proxy-Authorization: Bearer KEY` (407 otherwise, health
    excepted); the header never reaches the upstream."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        _sim, proxy = await _proxy(start_simulator, start_proxy, upstream,
                                   ZCOMPUTE_ACCESS_KEY=KEY)
        port, host = proxy.port or 0, f"localhost:{proxy.port}"
        refused = [
            await _get(port, "/v1/x", host),
            await _get(port, "/v1/x", host, ("Proxy-Authorization", "Bearer wrong-key-000000")),
            await _get(port, "/v1/x", host, ("Proxy-Authorization", f"Basic {KEY}")),
            await _get(port, "/v1/x", host, ("Proxy-Authorization", f"Bearer {KEY}x")),
            await _get(port, "/v1/x", host, ("Proxy-Authorization", f"Bearer {KEY}"),
                       ("Proxy-Authorization", f"Bearer {KEY}")),
            await _get(port, "/_proxy/status", host),
        ]
        for reply in refused:
            assert (reply.status, reply.code) == (407, "access_key_required")
            assert reply.headers("Proxy-Authenticate") == ['Bearer realm="zcompute-proxy"']
            assert KEY not in reply.body.decode()
        assert upstream.requests == []
        ok = await _get(port, "/v1/x", host, ("Proxy-Authorization", f"bearer  {KEY}"))
        health = await _get(port, "/_proxy/health", host)
        assert (ok.status, health.status) == (200, 200)
        (seen,) = upstream.requests
        assert seen.headers("Proxy-Authorization") == []
    finally:
        await upstream.close()


async def test_peer_allow_list_refuses_127_0_0_2(start_simulator: SimulatorFactory,
                                                 start_proxy: ProxyFactory) -> None:
    """With allowed_peers 127.0.0.1/32, a real connection from 127.0.0.2 gets 403 whatever
    its Host, and nothing is contacted; 127.0.0.1 passes."""
    upstream = await RawUpstream(json_reply(BODY)).start()
    try:
        sim, proxy = await _proxy(start_simulator, start_proxy, upstream,
                                  ZCOMPUTE_ALLOWED_PEERS="127.0.0.1/32")
        port = proxy.port or 0
        other = await _get(port, "/v1/x", f"localhost:{port}", source="127.0.0.2")
        health = await _get(port, "/_proxy/health", f"localhost:{port}", source="127.0.0.2")
        assert (other.status, other.code) == (403, "peer_not_allowed")
        assert (health.status, health.code) == (403, "peer_not_allowed")
        assert "127.0.0.2" in other.json()["error"]["message"]
        assert upstream.requests == []
        assert _identity_calls(sim) == 0
        assert (await _get(port, "/v1/x", f"localhost:{port}", source="127.0.0.1")).status == 200
    finally:
        await upstream.close()


@pytest.fixture
def raw_upstream_url() -> Iterator[str]:
    """A tiny HTTP server in a child process answering every request with BODY (for
    subprocess proxies, which cannot reach this test's event loop)."""
    port = free_port()
    script = (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        seen = sorted(k.lower() for k in self.headers.keys())\n"
        "        body = ('{\"seen\": %s}' % str(seen).replace(\"'\", '\"')).encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers(); self.wfile.write(body)\n"
        "    def log_message(self, *a): pass\n"
        f"h.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n")
    proc = subprocess.Popen(["python3", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def _serve_env(upstream: str, **extra: str) -> dict[str, str]:
    """Environment for a `serve` subprocess whose /v1 routes need no token."""
    return {**BASE_ENV, "ZCOMPUTE_URL": upstream,
            "ZCOMPUTE_IDENTITY_URL": "http://127.0.0.1:9/v3/auth/tokens", **extra}


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("from_local_address", [True, False],
                         ids=["non-loopback-source", "127.0.0.2-vs-allow-list"])
async def test_row51_default_listen_is_loopback_and_other_peers_are_refused(
        raw_upstream_url: str, from_local_address: bool) -> None:
    """With the default host, P listens on 127.0.0.1 only; a connection from a non-loopback
    local address (when the machine has one; otherwise, and always in the second case, from
    127.0.0.2 against a 127.0.0.1/32 allow-list) gets 403 from the peer check whatever its
    Host."""
    port = free_port()
    source = non_loopback_ipv4() if from_local_address else None
    extra = {} if source else {"ZCOMPUTE_ALLOWED_PEERS": "127.0.0.1/32"}
    args = ["serve", "--listen", f":{port}", "--route", "/v1/**=none"]
    with running(args, f"http://127.0.0.1:{port}/_proxy/health",
                 _serve_env(raw_upstream_url, **extra)) as proc:
        assert listening_sockets(proc.proc.pid) == {("127.0.0.1", port)}
        peer = source or "127.0.0.2"
        reply = await _get(port, "/v1/x", f"localhost:{port}", source=peer)
        assert (reply.status, reply.code) == (403, "peer_not_allowed")
        if source is not None:
            with pytest.raises(ConnectionRefusedError):
                await exchange(port, request("GET", "/v1/x", f"localhost:{port}"), host=source)
        assert (await _get(port, "/v1/x", f"localhost:{port}")).status == 200
    refusals = [e for e in _events(proc.stderr()) if e["event"] == "request_refused"]
    assert [(e["peer"], e["code"]) for e in refusals] == [(peer, "peer_not_allowed")]


@pytest.mark.skipif(non_loopback_ipv4() is None, reason="no non-loopback IPv4 address here")
async def test_non_loopback_listen_with_an_access_key(raw_upstream_url: str,
                                                      tmp_path: Path) -> None:
    """Bound to a non-loopback address with a key: other peers need the key; with an
    allow-list excluding them, they get 403 even with it."""
    source = non_loopback_ipv4() or ""
    key_file = tmp_path / "key"
    assert run(["serve", "--generate-access-key", str(key_file)]).returncode == 0
    key = key_file.read_text().strip()
    auth = ("Proxy-Authorization", f"Bearer {key}")
    for allow_peer, status in (([], 200), (["--allow-peer", "127.0.0.0/8"], 403)):
        port = free_port()
        args = ["serve", "--listen", f"{source}:{port}", "--route", "/v1/**=none",
                "--access-key-file", str(key_file), *allow_peer]
        with _started(args, _serve_env(raw_upstream_url)) as proc:
            await _wait_tcp(source, port, proc)
            assert listening_sockets(proc.pid) == {(source, port)}
            no_key = await exchange(port, request("GET", "/v1/x", f"localhost:{port}"),
                                    host=source, source=source)
            with_key = await exchange(port, request("GET", "/v1/x", f"localhost:{port}", [auth]),
                                      host=source, source=source)
            assert no_key.status == (407 if status == 200 else 403)
            assert with_key.status == status


@pytest.mark.usefixtures("raw_upstream_url")
def test_non_loopback_listen_without_key_is_a_config_error() -> None:
    """Binding all interfaces with no access key and no --allow-remote exits 2 naming the fix."""
    result = run(["serve", "--listen", "0.0.0.0:8080"],
                 env=_serve_env("http://127.0.0.1:9"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: --listen is 0.0.0.0:8080, which other machines can reach")
    assert "--generate-access-key" in line
    assert "--allow-remote" in line


def test_allow_remote_warns_at_every_start(raw_upstream_url: str) -> None:
    """--allow-remote logs a warning each time the proxy starts."""
    port = free_port()
    args = ["serve", "--listen", f"127.0.0.1:{port}", "--allow-remote"]
    for _ in range(2):
        with running(args, f"http://127.0.0.1:{port}/_proxy/health",
                     _serve_env(raw_upstream_url)) as proc:
            pass
        warnings = [e for e in _events(proc.stderr()) if e["event"] == "config_warning"]
        assert any("security.allow_remote is on" in str(e["message"]) for e in warnings)


async def test_row52_client_forwarding_headers_are_not_trusted(raw_upstream_url: str) -> None:
    """X-Forwarded-*/Forwarded neither change the logged peer nor the Host check, and never
    reach the upstream."""
    port = free_port()
    spoof = (("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Host", "evil.example"),
             ("Forwarded", "for=1.2.3.4;host=evil"), ("X-Real-IP", "10.9.9.9"))
    with running(["serve", "--listen", f"127.0.0.1:{port}", "--route", "/v1/**=none"],
                 f"http://127.0.0.1:{port}/_proxy/health", _serve_env(raw_upstream_url)) as proc:
        passed = await _get(port, "/v1/x", f"localhost:{port}", *spoof)
        rebound = await _get(port, "/v1/x", f"evil.example:{port}",
                             ("X-Forwarded-Host", f"localhost:{port}"),
                             ("Forwarded", f"host=localhost:{port}"))
    assert passed.status == 200
    seen = passed.json()["seen"]
    assert not [name for name in seen if "forwarded" in name or name == "x-real-ip"]
    assert (rebound.status, rebound.code) == (403, "host_not_allowed")
    events = _events(proc.stderr())
    (access,) = [e for e in events if e["event"] == "request"]
    assert access["peer"] == "127.0.0.1"
    (refused,) = [e for e in events if e["event"] == "request_refused"]
    assert refused["peer"] == "127.0.0.1"
    assert "10.0.0.1" not in proc.stderr()
    assert "1.2.3.4" not in proc.stderr()


async def test_unix_socket_listen_is_0600_and_serves(raw_upstream_url: str) -> None:
    """`--listen unix:PATH` creates a 0600 socket that serves requests and is removed on
    exit; a stale socket file from a dead process is replaced."""
    folder = Path(tempfile.mkdtemp(prefix="zcp-unix-"))
    path = folder / "proxy.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    args = ["serve", "--listen", f"unix:{path}", "--route", "/v1/**=none"]
    with _started(args, _serve_env(raw_upstream_url)) as proc:
        health = await _wait_unix(path, proc)
        assert health.status == 200
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(path.stat().st_mode)
        reply = await exchange(0, request("GET", "/v1/x", "localhost"), unix=path)
        assert reply.status == 200
        evil = await exchange(0, request("GET", "/v1/x", "evil.example"), unix=path)
        assert (evil.status, evil.code) == (403, "host_not_allowed")
        assert listening_sockets(proc.pid) == set()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not path.exists()


def test_generate_access_key_writes_a_new_0600_file(tmp_path: Path) -> None:
    """`serve --generate-access-key FILE` writes a strong key to a new 0600 file, never
    prints it, and refuses to overwrite; the proxy accepts the file."""
    key_file = tmp_path / "key"
    first = run(["serve", "--generate-access-key", str(key_file)])
    assert first.returncode == 0, first.stderr
    key = key_file.read_text().strip()
    assert len(key) >= 43
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key not in first.stdout + first.stderr
    again = run(["serve", "--generate-access-key", str(key_file)])
    assert again.returncode == 2
    assert "exists" in again.stderr
    assert key_file.read_text().strip() == key
    check = run(["routes", "/v1/x", "--listen", "0.0.0.0:8080", "--access-key-file",
                 str(key_file)], env={"ZCOMPUTE_URL": "https://zc.example.com"})
    assert check.returncode == 0, check.stderr


class _Proc:
    """A started `zcompute-proxy` child with its stderr in a file."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.log = Path(tempfile.mkdtemp(prefix="zcp-guard-")) / "stderr"
        with self.log.open("wb") as err:
            self.popen = subprocess.Popen([*COMMAND, *args], cwd=ROOT, env=clean_env(env),
                                          stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.popen.pid

    def send_signal(self, sig: int) -> None:
        """Signal the child."""
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code."""
        return self.popen.wait(timeout)

    def alive(self) -> bool:
        """Still running?"""
        return self.popen.poll() is None

    def stderr(self) -> str:
        """Its log so far."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def _started(args: list[str], env: dict[str, str]) -> Iterator[_Proc]:
    """Start a child; stop it with SIGTERM (then SIGKILL) at the end."""
    proc = _Proc(args, env)
    try:
        yield proc
    finally:
        if proc.alive():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.wait(10)


async def _wait_tcp(host: str, port: int, proc: _Proc) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.alive(), proc.stderr()
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise TimeoutError(proc.stderr())


async def _wait_unix(path: Path, proc: _Proc) -> Reply:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.alive(), proc.stderr()
        try:
            return await exchange(0, request("GET", "/_proxy/health", "localhost"), unix=path)
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(proc.stderr())



async def test_the_listen_address_itself_is_an_allowed_host(
        start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> None:
    """`--listen 127.0.0.2:PORT`: the banner's own curl line (Host 127.0.0.2) is accepted."""
    sim = await start_simulator()
    config = proxy_config(base_url(sim), env={"ZCOMPUTE_LISTEN": "127.0.0.2:8080"})
    proxy = await start_proxy(config)
    reply = await _raw_exchange(proxy.port or 0, b"GET /api/v2/compute/vms HTTP/1.1\r\n"
                               b"Host: 127.0.0.2:8080\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
