"""Composition root: builds the one client session, the token manager and the handlers.

Everything with a lifetime (the session, token tasks) is created and closed in the
application's cleanup context, and nowhere else.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web

from proxy import admin
from proxy.clock import Clock, SystemClock
from proxy.config import Config, UpstreamConfig
from proxy.credentials import SecretPasscodes
from proxy.forward import Forwarder
from proxy.identity import IdentityClient
from proxy.log import REDACTOR
from proxy.routes import RouteTable
from proxy.tokens import RenewalPolicy, TokenManager

TOKENS: Final = web.AppKey("tokens", TokenManager)
FORWARDER: Final = web.AppKey("forwarder", Forwarder)
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived objects of a running proxy (for the CLI's one-shot commands too)."""

    session: aiohttp.ClientSession
    tokens: TokenManager
    routes: RouteTable


def ssl_context(upstream: UpstreamConfig) -> ssl.SSLContext | bool:
    """Verified TLS by default; a CA bundle when given; `False` only when insecure is set."""
    if upstream.insecure:
        return False
    if upstream.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(upstream.ca_bundle))
    return True


def client_session(config: Config) -> aiohttp.ClientSession:
    """The one upstream session: no decompression, no cookies, no added headers."""
    upstream = config.upstream
    connector = aiohttp.TCPConnector(limit=upstream.max_connections, ssl=ssl_context(upstream))
    timeout = aiohttp.ClientTimeout(total=None, connect=upstream.connect_timeout,
                                    sock_read=upstream.read_timeout)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=SKIP_AUTO_HEADERS,
        max_line_size=config.max_header_size, max_field_size=config.max_header_size,
        trust_env=False)


def build_services(config: Config, clock: Clock | None = None) -> Services:
    """Session, identity client and token manager for `config` (call inside a running loop)."""
    if config.auth is None:
        raise ValueError("build_services needs a configuration with credentials")
    clock = clock or SystemClock()
    auth = config.auth
    REDACTOR.add(auth.password.reveal())
    if auth.totp_secret is not None:
        REDACTOR.add(auth.totp_secret.reveal())
    session = client_session(config)
    passcodes = SecretPasscodes(auth.totp_secret, clock) if auth.totp_secret else None
    issuer = IdentityClient(session, config.upstream.identity_url, auth, passcodes, clock,
                            remember=REDACTOR.add)
    tokens = TokenManager(issuer, clock=clock,
                          policy=RenewalPolicy(config.tokens.renew_margin))
    return Services(session, tokens, route_table(config))


def route_table(config: Config) -> RouteTable:
    """The configured rules plus the defaults; the identity path is never given a token."""
    identity, upstream = config.upstream.identity_url, config.upstream.url
    identity_path = None
    if identity.origin() == upstream.origin() and identity.path.startswith(upstream.path):
        identity_path = "/" + identity.path[len(upstream.path):].lstrip("/")
    return RouteTable(config.routes, default_project=config.default_project,
                      identity_path=identity_path)


def create_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    """The proxy application for `config`."""
    app = web.Application()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = build_services(config, clock)
        app[SESSION], app[TOKENS] = services.session, services.tokens
        app[FORWARDER] = Forwarder(services.session, config.upstream.url, services.routes,
                                   services.tokens, config.tokens.replay_limit)
        yield
        await services.tokens.close()
        await services.session.close()

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    async def defer_expect(_request: web.Request) -> None:
        """100-continue is sent by the forwarder once a token is ready."""

    app.cleanup_ctx.append(lifecycle)
    admin.add_routes(app, config, TOKENS)
    app.router.add_route("*", "/{tail:.*}", forward, expect_handler=defer_expect)
    return app


def runner_options(config: Config) -> dict[str, object]:
    """Server settings: large header lines accepted, request bodies never decompressed."""
    return {"access_log": None, "auto_decompress": False,
            "max_line_size": config.max_header_size, "max_field_size": config.max_header_size}
