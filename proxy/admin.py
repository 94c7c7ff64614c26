"""The proxy's own endpoints under `/_proxy/`: health, status, and the operator's actions.

    GET  /_proxy/health   200 while the process serves
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
from typing import Any, Final

from aiohttp import web

from proxy import __version__
from proxy.credentials import HumanPasscodes
from proxy.errors import BadRequest, ConfigError, ProxyError
from proxy.reload import apply_config
from proxy.scope import ACCOUNT
from proxy.services import Services, mfa_state

PREFIX: Final = "/_proxy"
MAX_FORM_SIZE: Final = 1024


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
    used = passcodes.supply(await _read_code(request))
    if not used:  # nobody waited: use it for an early renewal of the account token
        services.tokens.renew_now(ACCOUNT)
    return web.json_response({"accepted": True,
                              "used_by": "waiting login" if used else "new login"})


async def _reload(services: Services) -> web.Response:
    if services.loader is None:
        raise BadRequest("this proxy was started without a configuration to re-read")
    try:
        changes = apply_config(services, services.loader())
    except ConfigError as exc:
        return _error(exc)
    return web.json_response({"reloaded": True, "changes": changes})


def add_routes(app: web.Application, services_key: web.AppKey[Services]) -> None:
    """Register the admin handlers on `app`."""
    started = time.monotonic()

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_document(request.app[services_key], started))

    async def login(request: web.Request) -> web.Response:
        return await _login(request.app[services_key])

    async def totp(request: web.Request) -> web.Response:
        try:
            return await _totp(request, request.app[services_key])
        except ProxyError as exc:
            return _error(exc)

    async def reload(request: web.Request) -> web.Response:
        try:
            return await _reload(request.app[services_key])
        except ProxyError as exc:
            return _error(exc)

    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_get(f"{PREFIX}/status", status)
    app.router.add_post(f"{PREFIX}/login", login)
    app.router.add_post(f"{PREFIX}/totp", totp)
    app.router.add_post(f"{PREFIX}/reload", reload)
