"""The proxy's own endpoints under `/_proxy/`: health, status, and the operator's actions.

    GET  /_proxy/         the status page (HTML; same-origin only; TOTP form)
    GET  /_proxy/health   200 while the process serves
    GET  /_proxy/ready    200 unless draining or a login failed definitively (latched)
    GET  /_proxy/metrics  Prometheus text format
    GET  /_proxy/status   JSON: configuration summary, each cached scope (fingerprint, expiry),
                          latched errors, MFA state, clock skew; never a token or secret
    POST /_proxy/login    clear latched failures and log in again now (waits for the result)
    POST /_proxy/totp     give a TOTP code: {"code": "123456"} or form field `code`
    POST /_proxy/reload   re-read the configuration and secret files
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from importlib import resources
from typing import Any, Final

import structlog
from aiohttp import web

from proxy import __version__
from proxy.credentials import HumanPasscodes
from proxy.errors import BadRequest, ConfigError, ProxyError
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.reload import apply_config
from proxy.scope import ACCOUNT, ScopeKind
from proxy.services import Services, mfa_state

log = structlog.get_logger("proxy.admin")

PREFIX: Final = "/_proxy"
MAX_FORM_SIZE: Final = 1024
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def status_document(services: Services, started: float) -> dict[str, Any]:
    """What `/_proxy/status` answers."""
    config, tokens = services.config, services.tokens
    auth = config.auth
    return {
        "version": __version__,
        "uptime_s": round(time.monotonic() - started, 1),
        "upstream": str(config.upstream.url),
        "identity_url": str(config.upstream.identity_url),
        "username": auth.username if auth else None,
        "account": auth.account if auth else None,
        "default_project": config.default_project,
        "mfa": mfa_state(services),
        "clock_skew_s": services.identity.clock_skew,
        "tokens": [asdict(row) for row in tokens.status()],
        "errors": {str(scope): exc.to_json()["error"]
                   for scope, exc in tokens.latched().items()},
    }


def _error(exc: ProxyError) -> web.Response:
    return web.json_response(exc.to_json(), status=exc.status)


async def _login(services: Services) -> web.Response:
    task = services.tokens.renew_now(ACCOUNT)
    wait = services.config.tokens.mfa_wait + 10
    try:
        entry = await asyncio.wait_for(asyncio.shield(task), wait)
    except ProxyError as exc:
        return _error(exc)
    except TimeoutError:
        return web.json_response({"login": "still running"}, status=202)
    return web.json_response({"login": "ok", "scope": "account",
                              "fingerprint": entry.token.fingerprint})


async def _read_code(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_FORM_SIZE:
        raise BadRequest("the body is too large for a TOTP code")
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest('send {"code": "123456"}') from None
        code = body.get("code") if isinstance(body, dict) else None
    else:
        code = (await request.post()).get("code")
    if not isinstance(code, str):
        raise BadRequest('send {"code": "123456"} or a form field code=123456')
    return code


async def _totp(request: web.Request, services: Services) -> web.Response:
    passcodes = services.passcodes
    if not isinstance(passcodes, HumanPasscodes):
        raise BadRequest("this proxy computes TOTP codes from its configured secret")
    passcodes.supply(await _read_code(request))
    return web.json_response({"accepted": True})


async def _reload(services: Services) -> web.Response:
    if services.loader is None:
        raise BadRequest("this proxy was started without a configuration to re-read")
    try:
        changes = apply_config(services, services.loader())
    except ConfigError as exc:
        log.error("reload_failed", error=exc.message, detail="kept the running configuration")
        return _error(exc)
    return web.json_response({"reloaded": True, "changes": changes})


def not_found(request: web.Request) -> web.Response:
    """A path under /_proxy/ that is not one of ours (or a method it does not take)."""
    return web.json_response({"error": {
        "code": "not_found", "status": 404,
        "message": f"{request.method} {request.path} is not an endpoint of the proxy; "
                   f"see {PREFIX}/ for what it offers"}, "source": "zcompute-proxy"},
        status=404)


def readiness(services: Services) -> tuple[int, dict[str, Any]]:
    """503 while draining or while a login is latched as failed; 200 otherwise."""
    if services.draining:
        return 503, {"ready": False, "reason": "shutting down"}
    default = services.config.default_project
    latched = [scope for scope in services.tokens.latched()
               if scope.kind is ScopeKind.ACCOUNT or scope.project == default]
    if latched:
        return 503, {"ready": False, "reason": "login failed; see /_proxy/status",
                     "scopes": sorted(str(scope) for scope in latched)}
    return 200, {"ready": True}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The status page's files, read once: name -> (bytes, content type)."""
    folder = resources.files("proxy") / "static"
    types = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
    return {item.name: (item.read_bytes(), types[item.name[item.name.rindex("."):]])
            for item in folder.iterdir() if item.name[item.name.rfind("."):] in types}


def _file_response(content: tuple[bytes, str]) -> web.Response:
    body, content_type = content
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers=PAGE_HEADERS)


class AdminHandlers:
    """The `/_proxy/*` handlers, reading the running proxy's Services from the app."""

    def __init__(self, services_key: web.AppKey[Services]) -> None:
        self._key = services_key
        self._started = time.monotonic()
        self._files = _static_files()

    def _services(self, request: web.Request) -> Services:
        return request.app[self._key]

    async def health(self, _request: web.Request) -> web.Response:
        """Liveness: 200 while the process serves."""
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness (see `readiness`)."""
        status, body = readiness(self._services(request))
        return web.json_response(body, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        body = self._services(request).metrics.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def page(self, _request: web.Request) -> web.Response:
        """The status page."""
        return _file_response(self._files["status.html"])

    async def static(self, request: web.Request) -> web.Response:
        """The page's script and style sheet (nothing else from the folder)."""
        content = self._files.get(request.match_info["name"])
        if content is None or content[1] == "text/html":
            raise web.HTTPNotFound()
        return _file_response(content)

    async def status(self, request: web.Request) -> web.Response:
        """The JSON status document."""
        return web.json_response(status_document(self._services(request), self._started))

    async def login(self, request: web.Request) -> web.Response:
        """Clear a rejected login and log in again now."""
        return await _login(self._services(request))

    async def totp(self, request: web.Request) -> web.Response:
        """Give a waiting login a TOTP code."""
        try:
            return await _totp(request, self._services(request))
        except ProxyError as exc:
            return _error(exc)

    async def reload(self, request: web.Request) -> web.Response:
        """Re-read the configuration and secret files."""
        try:
            return await _reload(self._services(request))
        except ProxyError as exc:
            return _error(exc)


def add_routes(app: web.Application, services_key: web.AppKey[Services]) -> None:
    """Register the admin handlers on `app`."""
    handlers = AdminHandlers(services_key)
    for path, handler in (("/", handlers.page), ("", handlers.page),
                          ("/static/{name}", handlers.static), ("/ready", handlers.ready),
                          ("/metrics", handlers.metrics), ("/health", handlers.health),
                          ("/status", handlers.status)):
        app.router.add_get(f"{PREFIX}{path}", handler)
    for path, handler in (("/login", handlers.login), ("/totp", handlers.totp),
                          ("/reload", handlers.reload)):
        app.router.add_post(f"{PREFIX}{path}", handler)
