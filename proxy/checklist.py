"""`zcompute-proxy check`: a checklist of configuration, TLS, clock skew and each login.

Green/red on a terminal, plain text otherwise; exit code 0 only when nothing failed.
"""

from __future__ import annotations

import sys
from typing import Final, TextIO

import aiohttp

from proxy.clock import SystemClock
from proxy.config import Config, parse_scope_spec
from proxy.errors import ProxyError
from proxy.identity import MAX_SKEW
from proxy.prompt import for_one_shot
from proxy.scope import ACCOUNT, Scope, ScopeKind
from proxy.services import Services, build_services

COLORS: Final = {"ok": "\033[32m", "warn": "\033[33m", "FAIL": "\033[31m"}
RESET: Final = "\033[0m"
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


class Checklist:
    """Prints one line per check and remembers whether any failed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._color = out.isatty()
        self.failed = False

    def line(self, status: str, text: str) -> None:
        """Print `status` (ok, warn, FAIL) and `text`."""
        self.failed |= status == "FAIL"
        label = f"{status:<5}"
        if self._color:
            label = f"{COLORS[status]}{label}{RESET}"
        print(f"{label} {text}", file=self._out, flush=True)


def scopes_to_check(config: Config) -> list[Scope]:
    """The account, the default project, and every project named in a route rule."""
    scopes = [ACCOUNT]
    if config.default_project:
        scopes.append(Scope(ScopeKind.PROJECT, config.default_project))
    for rule in config.routes:
        spec = parse_scope_spec(rule.scope, rule.source)
        if isinstance(spec, Scope) and spec not in scopes:
            scopes.append(spec)
    return scopes


async def check_upstream(services: Services, checks: Checklist) -> None:
    """Reach the upstream once: TLS verification, or a warning about plain HTTP."""
    upstream = services.config.upstream
    try:
        async with services.session.get(upstream.url, allow_redirects=False) as resp:
            await resp.read()
    except aiohttp.ClientConnectorCertificateError as exc:
        checks.line("FAIL", f"TLS to {upstream.url}: certificate not trusted "
                            f"({exc.certificate_error.__class__.__name__}); set "
                            "upstream.ca_bundle (ZCOMPUTE_CA_BUNDLE) to your cluster's CA")
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        checks.line("FAIL", f"cannot reach {upstream.url}: {exc.__class__.__name__}")
        return
    if upstream.url.scheme == "https":
        how = "verification OFF (insecure)" if upstream.insecure else "certificate verified"
        checks.line("warn" if upstream.insecure else "ok", f"TLS to {upstream.url}: {how}")
    elif upstream.url.host in LOOPBACK_HOSTS:
        checks.line("ok", f"upstream {upstream.url} reachable (plain HTTP on loopback)")
    else:
        checks.line("warn", f"upstream {upstream.url} is plain HTTP: credentials and tokens "
                            "cross the network unencrypted")


async def check_logins(services: Services, checks: Checklist) -> None:
    """Log in for every scope the proxy will need."""
    for scope in scopes_to_check(services.config):
        try:
            token = await services.tokens.get(scope)
        except ProxyError as exc:
            hint = f" (hint: {exc.hint})" if exc.hint else ""
            checks.line("FAIL", f"login {scope}: {exc.message}{hint}")
        else:
            checks.line("ok", f"login {scope}: token {token.fingerprint}, "
                              f"{token.remaining(SystemClock()):.0f} s left")


def check_clock(services: Services, checks: Checklist) -> None:
    """Compare our clock with identity's `Date` header (seen during the logins)."""
    skew = services.identity.clock_skew
    if skew is None:
        checks.line("warn", "clock skew unknown (identity sent no Date header)")
    elif abs(skew) > MAX_SKEW:
        checks.line("warn", f"clock skew {skew:+.0f} s against identity: token lifetimes are "
                            "measured skew-free, but fix NTP")
    else:
        checks.line("ok", f"clock skew {skew:+.0f} s against identity")


async def check(config: Config, out: TextIO = sys.stdout) -> int:
    """Run every check; 0 when all passed (warnings allowed), 1 otherwise."""
    checks = Checklist(out)
    checks.line("ok", f"configuration ({config.config_file or 'no config file'}, "
                      f"upstream {config.upstream.url})")
    for warning in config.warnings:
        checks.line("warn", warning)
    services = build_services(config)
    prompt = for_one_shot(services.passcodes, sys.stdin, sys.stderr)
    try:
        await check_upstream(services, checks)
        await check_logins(services, checks)
        check_clock(services, checks)
    finally:
        if prompt is not None:
            prompt.close()
        await services.close()
    return 1 if checks.failed else 0
