"""The proxy's own endpoints under `/_proxy/`: liveness and a JSON status (never a token)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Final

from aiohttp import web

from proxy import __version__
from proxy.config import Config
from proxy.tokens import TokenManager

PREFIX: Final = "/_proxy"


def status_document(config: Config, tokens: TokenManager, started: float) -> dict[str, Any]:
    """What `/_proxy/status` answers: configuration summary, cached scopes, latched errors."""
    auth = config.auth
    return {
        "version": __version__,
        "uptime_s": round(time.monotonic() - started, 1),
        "upstream": str(config.upstream.url),
        "identity_url": str(config.upstream.identity_url),
        "username": auth.username if auth else None,
        "account": auth.account if auth else None,
        "default_project": config.default_project,
        "totp": "secret configured" if auth and auth.totp_secret else "none",
        "tokens": [asdict(row) for row in tokens.status()],
        "errors": {str(scope): exc.to_json()["error"]
                   for scope, exc in tokens.latched().items()},
    }


def add_routes(app: web.Application, config: Config, tokens_key: web.AppKey[TokenManager]) -> None:
    """Register the admin handlers on `app`."""
    started = time.monotonic()

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_document(config, request.app[tokens_key], started))

    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_get(f"{PREFIX}/status", status)
