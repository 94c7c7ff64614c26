"""Test-only control endpoints under /_sim/ (no authentication: never expose them)."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from proxy.simulator.errors import SimError
from proxy.simulator.model import User
from proxy.simulator.state import SIM_STATE, SimState
from proxy.simulator.tokens import iso_utc


def add_routes(router: web.UrlDispatcher) -> None:
    """GET /_sim/stats; POST /_sim/reset-stats, /_sim/revoke, /_sim/outage, /_sim/password."""
    router.add_get("/_sim/stats", stats)
    router.add_post("/_sim/reset-stats", reset_stats)
    router.add_post("/_sim/revoke", revoke_all)
    router.add_post("/_sim/outage", outage)
    router.add_post("/_sim/password", change_password)


async def stats(request: web.Request) -> web.StreamResponse:
    """The counters (see Stats.snapshot)."""
    return web.json_response(request.app[SIM_STATE].stats.snapshot())


async def reset_stats(request: web.Request) -> web.StreamResponse:
    """Zero every counter."""
    request.app[SIM_STATE].stats.reset()
    return web.json_response({"reset": True})


async def revoke_all(request: web.Request) -> web.StreamResponse:
    """Revoke every token issued so far: `{"revoked": N}`."""
    return web.json_response({"revoked": request.app[SIM_STATE].tokens.revoke_all()})


async def outage(request: web.Request) -> web.StreamResponse:
    """`?seconds=N`: identity answers 503 + Retry-After for N seconds (0 ends an outage)."""
    state = request.app[SIM_STATE]
    try:
        seconds = float(request.query["seconds"])
    except (KeyError, ValueError):
        raise SimError(400, "Expecting ?seconds=N.") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise SimError(400, "seconds must be a finite number >= 0.")
    state.outage_until = state.now() + seconds
    return web.json_response({"seconds": seconds, "until": iso_utc(state.outage_until)})


async def change_password(request: web.Request) -> web.StreamResponse:
    """JSON {"user", "password", "account"?}: set the password, revoke the user's tokens."""
    state = request.app[SIM_STATE]
    try:
        body: Any = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) and body[k] for k in ("user", "password")):
        raise SimError(400, 'Expecting JSON {"user": ..., "password": ...}.')
    user = _find_user(state, body["user"], body.get("account"))
    user.password = body["password"]
    revoked = state.tokens.revoke_all(user)
    return web.json_response({"user": {"id": user.id, "name": user.name}, "revoked": revoked})


def _find_user(state: SimState, name_or_id: str, account: object) -> User:
    """A user by id, or by name (in `account` if given); 404 if none, 400 if ambiguous."""
    found = [u for u in state.directory.users()
             if name_or_id in (u.id, u.name) and account in (None, u.account.name)]
    if not found:
        raise SimError(404, f"No such user: {name_or_id}")
    if len(found) > 1:
        raise SimError(400, f"User {name_or_id} exists in several accounts; give 'account'.")
    return found[0]
