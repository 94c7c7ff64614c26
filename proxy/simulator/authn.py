"""Check the identity methods of a token request: password, totp (with receipts), token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from proxy.simulator.errors import SimError
from proxy.simulator.model import Directory, User
from proxy.simulator.state import SimState
from proxy.simulator.tokens import Receipt, Token

MFA_RULES = [["password", "totp"]]
FACTORS = ("password", "totp")
SUPPORTED_METHODS = (*FACTORS, "token")


@dataclass(frozen=True)
class Authenticated:
    """Who authenticated and with which methods; `parent` is set for a re-scope."""

    user: User
    methods: tuple[str, ...]
    parent: Token | None = None


class ReceiptRequired(Exception):
    """An MFA user passed some factors but not all: answer 401 with this receipt."""

    def __init__(self, receipt: Receipt) -> None:
        super().__init__("more authentication methods required")
        self.receipt = receipt


def parse_identity(auth: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`auth.identity` and its method names (400 if malformed, 401 if unsupported)."""
    identity = auth.get("identity")
    if not isinstance(identity, dict):
        raise SimError(400, "Expecting to find identity in auth.")
    methods = identity.get("methods")
    if not isinstance(methods, list) or not methods or not all(
            isinstance(m, str) for m in methods):
        raise SimError(400, "Expecting to find methods in identity.")
    if any(m not in SUPPORTED_METHODS for m in methods):
        raise SimError(401, "Attempted to authenticate with an unsupported method.")
    return identity, methods


def authenticate(state: SimState, identity: dict[str, Any], methods: list[str],
                 receipt_id: str | None) -> Authenticated:
    """Verify every method; raise SimError (401/400/404) or ReceiptRequired (MFA pending)."""
    if "token" in methods:
        return _rescope(state, identity, methods)
    now = state.now()
    user = _factor_user(state.directory, identity, methods)
    if state.lockout.locked(user.id, now):
        raise SimError(401, f"The account is locked for user: {user.id}.")
    for method in (m for m in FACTORS if m in methods):
        if not _factor_ok(state, user, method, identity[method]["user"], now):
            state.lockout.failed(user.id, now)
            raise SimError(401)
    state.lockout.succeeded(user.id)
    satisfied = set(methods) | _receipt_methods(state, receipt_id, user, now)
    passed = tuple(m for m in FACTORS if m in satisfied)
    if user.mfa and not set(FACTORS) <= satisfied:
        raise ReceiptRequired(state.receipts.issue(user, passed, now))
    return Authenticated(user, passed)


def _rescope(state: SimState, identity: dict[str, Any], methods: list[str]) -> Authenticated:
    """The token method: Keystone answers 404 "Failed to validate token" for a bad parent."""
    if set(methods) != {"token"}:
        raise SimError(400, "The token method cannot be combined with other methods.")
    payload = identity.get("token")
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise SimError(400, "Expecting to find id in token.")
    parent = state.tokens.get(payload["id"], state.now())
    if parent is None:
        raise SimError(404, "Failed to validate token")
    inherited = tuple(m for m in parent.methods if m != "token")
    return Authenticated(parent.user, ("token", *inherited), parent)


def _factor_user(directory: Directory, identity: dict[str, Any], methods: list[str]) -> User:
    """The one user that every password/totp payload names (401 if unknown or different)."""
    users = []
    for method in (m for m in FACTORS if m in methods):
        payload = identity.get(method)
        if not isinstance(payload, dict) or not isinstance(payload.get("user"), dict):
            raise SimError(400, f"Expecting to find user in {method}.")
        users.append(_find_user(directory, payload["user"]))
    if any(u is not users[0] for u in users):
        raise SimError(401)
    return users[0]


def _find_user(directory: Directory, ref: dict[str, Any]) -> User:
    if isinstance(ref.get("id"), str):
        user = directory.user(ref["id"])
    elif isinstance(ref.get("name"), str):
        domain = ref.get("domain")
        if not isinstance(domain, dict):
            raise SimError(400, "Expecting to find domain in user.")
        account = (directory.account(account_id=domain["id"]) if "id" in domain
                   else directory.account(name=domain.get("name")))
        user = account.user_named(ref["name"]) if account is not None else None
    else:
        raise SimError(400, "Expecting to find id or name in user.")
    if user is None:
        raise SimError(401)
    return user


def _factor_ok(state: SimState, user: User, method: str, ref: dict[str, Any],
               now: float) -> bool:
    if method == "password":
        given = ref.get("password")
        return isinstance(given, str) and hmac.compare_digest(given.encode(),
                                                              user.password.encode())
    return user.totp_secret is not None and state.totp.verify(
        user.id, user.totp_secret, ref.get("passcode"), now)


def _receipt_methods(state: SimState, receipt_id: str | None, user: User,
                     now: float) -> set[str]:
    """Factors a valid receipt of this user vouches for (Keystone: 404 if none)."""
    if not receipt_id:
        return set()
    receipt = state.receipts.get(receipt_id, now)
    if receipt is None or receipt.user is not user:
        raise SimError(404, "Failed to validate receipt")
    return set(receipt.methods)
