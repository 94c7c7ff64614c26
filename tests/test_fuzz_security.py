"""Property tests (hypothesis): request targets, route matching and configuration parsing
never crash except with our own errors, never reach anything but the configured upstream,
and never put a secret in an error message."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy import simulator
from proxy.app import create_app, runner_options
from proxy.config import ENVIRONMENT, FILE_KEYS, FLAGS, RouteRule, parse_route_flag
from proxy.config_loader import load
from proxy.errors import BadRequest, ConfigError
from proxy.routes import RouteTable, compile_pattern, normalize_for_matching
from tests.conftest import proxy_config
from tests.rawhttp import RawUpstream, json_reply

MARK = b'{"fuzz": "upstream"}'
UPSTREAMS = ("https://zc.example.com", "https://zc.example.com:8443/base", "http://10.0.0.5/")
# Pieces that have fooled URL handling elsewhere: dot segments, encoded slashes and dots,
# authority look-alikes, backslashes, fragments, the API Explorer prefix, NUL and bare %.
PIECES = ("/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "\\", "@",
          ":", "?", "#", "&", "=", "%", "%00", "%zz", "http://evil.example", "evil.example",
          "/api-explorer", "/api/v2/", "identity", "%69dentity", "aws", "~", ";", "+", "*")
SAFE = st.characters(min_codepoint=0x21, max_codepoint=0x7e)
TARGETS = st.lists(st.one_of(st.sampled_from(PIECES), st.text(SAFE, max_size=4)),
                   max_size=12).map("".join)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
SECRET_MARK = "S3cr3tMark"
SECRETS = st.text(min_size=8, max_size=30).map(lambda t: f"{SECRET_MARK}-{t}")
NUMBERISH = st.sampled_from(["nan", "inf", "-inf", "1e999", "-1", "0", "0.5", "1e3", " 7 ",
                             "0x10", "", "true", "١٢"])
PLAIN = st.one_of(NUMBERISH, st.text(max_size=40)).filter(lambda v: SECRET_MARK not in v)


def forwarded_url(upstream: str, target: str) -> URL:
    """The upstream URL for a resolved target, built exactly as `Forwarder._exchange` does."""
    return URL(str(URL(upstream)).rstrip("/") + target, encoded=True)


@settings(max_examples=600, deadline=None)
@given(upstream=st.sampled_from(UPSTREAMS), method=METHODS, target=TARGETS,
       project=st.one_of(st.none(), st.text(max_size=20)))
@example(upstream=UPSTREAMS[0], method="GET", target="//evil.example/x", project=None)
@example(upstream=UPSTREAMS[0], method="GET", target="/@evil.example/x", project=None)
@example(upstream=UPSTREAMS[1], method="GET", target="/api-explorer/api/v2/../x", project=None)
def test_resolved_targets_stay_on_the_configured_upstream(upstream: str, method: str,
                                                          target: str, project: str | None,
                                                          ) -> None:
    """`resolve` raises only BadRequest; what it accepts keeps the upstream's scheme, host,
    port and base path, and is the client's own bytes (minus the Explorer prefix)."""
    table = RouteTable((), default_project="dev", identity_path="/api/v2/identity/auth")
    try:
        route = table.resolve(method, target, project)
    except BadRequest:
        return
    base = URL(upstream)
    url = forwarded_url(upstream, route.target)
    assert (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
    assert url.raw_path.startswith(base.raw_path.rstrip("/") + "/")
    assert route.target in (target, target.removeprefix("/api-explorer"))
    assert ".." not in normalize_for_matching(route.target.partition("?")[0]).split("/")


SEGMENT = st.text(st.characters(categories=["L", "N"], include_characters="-_.~"),
                  min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(prefix=st.lists(SEGMENT, min_size=1, max_size=4), rest=st.lists(SEGMENT, max_size=4),
       scope=st.sampled_from(["account", "project", "project:other", "none"]),
       method=METHODS)
def test_a_prefix_rule_owns_exactly_its_subtree(prefix: list[str], rest: list[str],
                                                scope: str, method: str) -> None:
    """`/p/**=S` decides for /p and everything under it, for no sibling such as /p-x, and
    the defaults decide the rest."""
    pattern = "/" + "/".join(prefix)
    rule = parse_route_flag(f"{pattern}/**={scope}")
    table = RouteTable((rule,), default_project="dev")
    inside = pattern + "".join(f"/{s}" for s in rest)
    assert table.match(method, inside).rule == rule
    assert table.match(method, pattern + "-x").rule != rule
    assert table.match(method, pattern + "x/" + "/".join(rest)).rule != rule


@settings(max_examples=500, deadline=None)
@given(pattern=st.text(max_size=30).map(lambda t: "/" + t),
       path=st.text(max_size=40).map(lambda t: "/" + t))
def test_any_pattern_compiles_and_matching_never_crashes(pattern: str, path: str) -> None:
    """Every pattern compiles to an anchored regex and every path (resolve only passes
    paths starting with /) gets a rule; a pattern without wildcards matches itself and
    nothing longer."""
    regex = compile_pattern(pattern)
    table = RouteTable((RouteRule(pattern=pattern, scope="account"),), default_project="p")
    assert table.match("GET", path).rule in table.rules
    if "*" not in pattern:
        assert regex.match(pattern)
        assert not regex.match(pattern + "/extra")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


FILE_SETTINGS = sorted(FILE_KEYS | {"auth.password", "security.access_key", "bogus.key"})
VALUES = st.one_of(PLAIN, st.integers(-2, 10**20), st.floats(), st.booleans(),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e300]),
                   st.lists(PLAIN, max_size=3))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=st.dictionaries(st.sampled_from(sorted(ENVIRONMENT.values())), PLAIN, max_size=3),
       flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), PLAIN, max_size=2),
       file=st.dictionaries(st.sampled_from(FILE_SETTINGS), VALUES, max_size=3),
       secrets=st.tuples(SECRETS, SECRETS, SECRETS))
@example(env={"ZCOMPUTE_RENEW_MARGIN": "nan"}, flags={}, file={"tokens.replay_limit": math.inf},
         secrets=(f"{SECRET_MARK}-pw-0001", f"{SECRET_MARK}-totp-01", f"{SECRET_MARK}-key-001"))
def test_config_parsing_fails_only_with_config_errors_that_hide_secrets(
        env: dict[str, str], flags: dict[str, str], file: dict[str, Any],
        secrets: tuple[str, str, str]) -> None:
    """Any mix of file, environment and flag values loads (with finite numbers) or raises
    ConfigError; neither the error nor the loaded configuration's repr shows a secret."""
    password, totp, key = secrets
    environ = {"ZCOMPUTE_URL": "https://zc.example.com", "ZCOMPUTE_USERNAME": "me",
               "ZCOMPUTE_ACCOUNT": "acme", "HOME": "/nonexistent", **env,
               "ZCOMPUTE_PASSWORD": password, "ZCOMPUTE_TOTP_SECRET": totp,
               "ZCOMPUTE_ACCESS_KEY": key}
    for name in ("ZCOMPUTE_PASSWORD_FILE", "ZCOMPUTE_TOTP_SECRET_FILE", "ZCOMPUTE_ACCESS_KEY_FILE"):
        environ.pop(name, None)
    sections: dict[str, list[str]] = {}
    for setting, value in file.items():
        section, name = setting.split(".")
        sections.setdefault(section, []).append(f"{name} = {_toml_value(value)}\n")
    text = "".join(f"[{section}]\n" + "".join(lines) for section, lines in sections.items())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        path.chmod(0o600)
        try:
            config = load(config_file=path, environ=environ, flags=flags)
        except ConfigError as exc:
            shown = exc.message + str(exc) + repr(exc)
        else:
            shown = repr(config) + str(config.security) + " ".join(config.warnings)
            numbers = (config.upstream.connect_timeout, config.upstream.read_timeout,
                       config.tokens.mfa_wait, config.tokens.renew_margin or 0.0)
            assert all(math.isfinite(n) for n in numbers)
    for secret in (password, totp, key):
        assert secret not in shown


@dataclass(repr=False)
class LiveProxy:
    """A proxy, its identity (the simulator) and a recording upstream, on a private loop."""

    port: int
    upstream: RawUpstream

    def __repr__(self) -> str:
        return f"LiveProxy(port={self.port})"


@pytest.fixture(scope="module")
def live_proxy() -> Iterator[LiveProxy]:
    """Real servers on loopback, run by a background event loop for the whole module."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application, **options: Any) -> int:
        runner = web.AppRunner(app, **options)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    async def start() -> LiveProxy:
        sim_port = await serve(simulator.create_app(simulator.SimulatorOptions()))
        upstream = await RawUpstream(json_reply(MARK)).start()
        config = proxy_config(upstream.url, env={
            "ZCOMPUTE_IDENTITY_URL": f"http://127.0.0.1:{sim_port}/api/v2/identity/auth"})
        return LiveProxy(await serve(create_app(config), **runner_options(config)), upstream)

    async def stop(live: LiveProxy) -> None:
        for runner in reversed(runners):
            await runner.cleanup()
        await live.upstream.close()

    live = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield live
    finally:
        asyncio.run_coroutine_threadsafe(stop(live), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _send(port: int, target: str) -> tuple[int, bytes]:
    data = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    return int(reply.split(b" ", 2)[1]), reply.partition(b"\r\n\r\n")[2]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=TARGETS.map(lambda t: t if t.startswith(("/", "http", "*")) else "/" + t))
@example(target="/v1/a#fragment")
@example(target="http://evil.example/v1/x")
@example(target="//evil.example/v1/x")
@example(target="/v1/%2e%2e/%2e%2e/etc")
def test_a_real_proxy_forwards_only_to_its_upstream(live_proxy: LiveProxy, target: str) -> None:
    """Over a real socket, a target is either refused with 400 and reaches nothing, or
    reaches the configured upstream byte for byte (minus the Explorer prefix)."""
    before = len(live_proxy.upstream.requests)
    status, body = _send(live_proxy.port, target)
    after = live_proxy.upstream.requests[before:]
    if status == 200:
        assert body == MARK
        (seen,) = after
        sent = target.removeprefix("/api-explorer") if target.startswith("/api-explorer/api/") \
            else target
        # Known divergence (yarl): an empty query's lone "?" is dropped, "/x?" arrives as "/x".
        assert seen.target in (sent, sent.removesuffix("?")), seen.target
    else:
        assert status == 400, (status, body[:200])
        assert after == []
