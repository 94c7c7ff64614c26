"""The long-lived objects of a running proxy: one client session, identity, tokens, routes.

Built once per process (by the app's cleanup context, or by a one-shot CLI command).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from proxy.clock import Clock, SystemClock
from proxy.config import Config, UpstreamConfig
from proxy.credentials import HumanPasscodes, PasscodeSource, SecretPasscodes
from proxy.identity import IdentityClient
from proxy.log import REDACTOR
from proxy.metrics import Metrics
from proxy.routes import RouteTable
from proxy.scope import ACCOUNT
from proxy.tokens import RenewalPolicy, TokenManager

log = structlog.get_logger("proxy.services")

SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
MFA_NOTICE_INTERVAL: Final = 60.0
MFA_NOTICE_AHEAD: Final = 15 * 60.0


@dataclass(slots=True)
class Services:
    """The long-lived objects of a running proxy (for the CLI's one-shot commands too).

    `config`, `identity` and `passcodes` are replaced when a reload changes the credentials.
    """

    config: Config
    clock: Clock
    session: aiohttp.ClientSession
    identity: IdentityClient
    passcodes: PasscodeSource
    tokens: TokenManager
    routes: RouteTable
    metrics: Metrics
    loader: Callable[[], Config] | None = None
    draining: bool = False

    async def close(self) -> None:
        """Stop token tasks, optionally revoke our tokens, close the session."""
        await self.tokens.close()
        if self.config.tokens.revoke_on_exit:
            for token in self.tokens.cached():
                revoked = await self.identity.revoke(token)
                log.info("token_revoked" if revoked else "token_revoke_failed",
                         scope=str(token.scope), fingerprint=token.fingerprint)
        await self.session.close()


SERVICES: Final = web.AppKey("services", Services)


async def mfa_notices(services: Services, interval: float = MFA_NOTICE_INTERVAL) -> None:
    """Warn in the log, from MFA_NOTICE_AHEAD on, that a person will soon have to give a code."""
    while True:
        await asyncio.sleep(interval)
        if not services.identity.mfa_known or not isinstance(services.passcodes, HumanPasscodes):
            continue
        renew_in = services.tokens.renews_in(ACCOUNT)
        if renew_in is not None and renew_in <= MFA_NOTICE_AHEAD:
            log.warning("mfa_needed_soon", detail=mfa_state(services),
                        how=services.passcodes.how_to)


def mfa_state(services: Services) -> str:
    """One line on MFA: not needed, handled by a secret, or when a person must give a code."""
    if not services.identity.mfa_known:
        return "not needed so far"
    if not isinstance(services.passcodes, HumanPasscodes):
        return "codes computed from the configured TOTP secret"
    if services.passcodes.waiting:
        return "needed now: a login is waiting for a TOTP code"
    renew_in = services.tokens.renews_in(ACCOUNT)
    if renew_in is None:
        return "needed for the next login"
    return f"needed in {renew_in / 60:.0f} minutes (account token renewal)"


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
    clock = clock or SystemClock()
    session = client_session(config)
    identity, passcodes = make_identity(config, session, clock)
    tokens = TokenManager(identity, clock=clock,
                          policy=RenewalPolicy(config.tokens.renew_margin))
    metrics = Metrics(tokens.status)
    tokens.listeners.append(metrics.token_event)
    return Services(config, clock, session, identity, passcodes, tokens, route_table(config),
                    metrics)


def make_identity(config: Config, session: aiohttp.ClientSession,
                  clock: Clock) -> tuple[IdentityClient, PasscodeSource]:
    """The identity client for the configured credentials, and its source of TOTP codes."""
    if config.auth is None:
        raise ValueError("the proxy needs a configuration with credentials")
    auth = config.auth
    REDACTOR.add(auth.password.reveal())
    passcodes: PasscodeSource
    if auth.totp_secret is not None:
        REDACTOR.add(auth.totp_secret.reveal())
        passcodes = SecretPasscodes(auth.totp_secret, clock)
    else:
        passcodes = HumanPasscodes(clock, wait=config.tokens.mfa_wait,
                                   how_to=totp_how_to(config))
    identity = IdentityClient(session, config.upstream.identity_url, auth, passcodes, clock,
                              remember=REDACTOR.add)
    return identity, passcodes


def totp_how_to(config: Config) -> str:
    """How a person can give the running proxy a TOTP code."""
    if config.listen.unix is not None:
        return ("run `zcompute-proxy totp CODE`, or POST {\"code\": \"CODE\"} to /_proxy/totp "
                f"over {config.listen} (or set ZCOMPUTE_TOTP_SECRET)")
    base = f"http://{config.listen}"
    page = "" if config.security.access_key else f", or open {base}/_proxy/"
    return (f"run `zcompute-proxy totp CODE`, POST {{\"code\": \"CODE\"}} to "
            f"{base}/_proxy/totp{page} (or set ZCOMPUTE_TOTP_SECRET)")


def route_table(config: Config) -> RouteTable:
    """The configured rules plus the defaults; the identity path is never given a token."""
    identity, upstream = config.upstream.identity_url, config.upstream.url
    identity_path = None
    if identity.origin() == upstream.origin() and identity.path.startswith(upstream.path):
        identity_path = "/" + identity.path[len(upstream.path):].lstrip("/")
    return RouteTable(config.routes, default_project=config.default_project,
                      identity_path=identity_path)


