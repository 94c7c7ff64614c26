"""The Keystone v3 token API at /api/v2/identity/auth and /v3/auth/tokens."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from proxy.simulator.authn import (
    MFA_RULES,
    Authenticated,
    ReceiptRequired,
    authenticate,
    parse_identity,
)
from proxy.simulator.errors import SimError, error_response
from proxy.simulator.scoping import ScopeTarget, check_access, resolve_scope
from proxy.simulator.state import SIM_STATE, SimState
from proxy.simulator.tokens import Token

AUTH_PATHS = ("/api/v2/identity/auth", "/v3/auth/tokens")
RECEIPT_HEADER = "Openstack-Auth-Receipt"


def add_routes(router: web.UrlDispatcher) -> None:
    """POST issues, GET (and HEAD) validates, DELETE revokes, on both identity paths."""
    for path in AUTH_PATHS:
        router.add_post(path, issue_token)
        router.add_get(path, validate_token)
        router.add_delete(path, revoke_token)


async def issue_token(request: web.Request) -> web.StreamResponse:
    """POST: 201 + X-Subject-Token, 401 + receipt for pending MFA, Keystone errors else."""
    state = request.app[SIM_STATE]
    state.stats.identity["requests"] += 1
    if (outage := _outage(state)) is not None:
        return outage
    try:
        token = await _issue(request, state)
    except ReceiptRequired as pending:
        state.stats.identity["receipts"] += 1
        receipt = pending.receipt
        return web.json_response(receipt.body(MFA_RULES), status=401,
                                 headers={RECEIPT_HEADER: receipt.id})
    except SimError as exc:
        state.stats.identity["failures"] += 1
        return exc.response(request)
    state.stats.identity["issued"] += 1
    state.stats.scopes[token.scope_label] += 1
    return web.json_response(token.body(), status=201, headers={"X-Subject-Token": token.id})


async def _issue(request: web.Request, state: SimState) -> Token:
    """Parse, resolve the scope, authenticate, check access and mint the token."""
    auth = await _auth_body(request)
    if "auto_enable_mfa" in auth:  # zCompute would create a new MFA secret: never honoured
        state.stats.identity["auto_enable_mfa"] += 1
    identity, methods = parse_identity(auth)
    receipt_id = request.headers.get(RECEIPT_HEADER)
    _count_kind(state, methods, receipt_id)
    target = resolve_scope(auth, state.directory)
    result = authenticate(state, identity, methods, receipt_id)
    target = target or ScopeTarget(result.user.account)
    check_access(result.user, target)
    return _mint(state, result, target)


def _mint(state: SimState, result: Authenticated, target: ScopeTarget) -> Token:
    """A fresh token; a re-scoped one keeps its parent's expires_at, as Keystone does."""
    now = state.now()
    expires_at = (result.parent.expires_at if result.parent is not None
                  else now + state.options.token_ttl)
    return state.tokens.issue(result.user, target.account, target.project, result.methods,
                              now=now, expires_at=expires_at, parent=result.parent)


def _count_kind(state: SimState, methods: list[str], receipt_id: str | None) -> None:
    if "token" in methods:
        state.stats.identity["token"] += 1
    elif "password" in methods:
        state.stats.identity["password"] += 1
    elif receipt_id:
        state.stats.identity["totp_receipt"] += 1


async def _auth_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise SimError(400, "Malformed request body: expecting JSON.") from None
    auth = body.get("auth") if isinstance(body, dict) else None
    if not isinstance(auth, dict):
        raise SimError(400, "Expecting to find auth in request body.")
    return auth


async def validate_token(request: web.Request) -> web.StreamResponse:
    """GET: 200 with the subject token's body, 404 if it is not valid, 401 for a bad caller."""
    state = request.app[SIM_STATE]
    state.stats.identity["validations"] += 1
    subject = _subject(request, state)
    if isinstance(subject, web.StreamResponse):
        return subject
    return web.json_response(subject.body(), headers={"X-Subject-Token": subject.id})


async def revoke_token(request: web.Request) -> web.StreamResponse:
    """DELETE: revoke the subject token, 204."""
    state = request.app[SIM_STATE]
    state.stats.identity["revocations"] += 1
    subject = _subject(request, state)
    if isinstance(subject, web.StreamResponse):
        return subject
    state.tokens.revoke(subject)
    return web.Response(status=204)


def _subject(request: web.Request, state: SimState) -> Token | web.StreamResponse:
    """The valid X-Subject-Token of a request from a valid X-Auth-Token, or the error."""
    state.stats.identity["requests"] += 1
    if (outage := _outage(state)) is not None:
        return outage
    now = state.now()
    if state.tokens.get(request.headers.get("X-Auth-Token"), now) is None:
        return SimError(401).response(request)
    subject = state.tokens.get(request.headers.get("X-Subject-Token"), now)
    if subject is None:
        return error_response(404, "Could not find token.")
    return subject


def _outage(state: SimState) -> web.Response | None:
    """503 with Retry-After while a simulated outage lasts."""
    remaining = state.outage_remaining()
    if remaining <= 0:
        return None
    state.stats.identity["outage"] += 1
    return error_response(503, "The identity service is unavailable (simulated outage).",
                          {"Retry-After": str(math.ceil(remaining))})
