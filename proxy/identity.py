"""Keystone v3 identity: auth bodies and token parsing (pure), and the client that logs in.

MFA: a password login for an MFA user answers 401 with an `Openstack-Auth-Receipt` header; we
finish with a TOTP code plus the receipt. Once we know the user needs MFA (or with
`auth.mfa = "combined"`), later logins send password and TOTP in one request. We never send
`auto_enable_mfa`, never put a token in an `X-Auth-Token` header here, and never retry a login
that identity rejected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import structlog
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.clock import Clock
from proxy.config import AuthConfig
from proxy.credentials import PasscodeSource
from proxy.errors import (
    CredentialsRejected,
    IdentityError,
    IdentityUnavailable,
    MfaRequired,
    RescopeRefused,
)
from proxy.scope import Scope, ScopeKind
from proxy.tokens import Token

log = structlog.get_logger("proxy.identity")

RECEIPT_HEADER: Final = "Openstack-Auth-Receipt"
SUBJECT_TOKEN_HEADER: Final = "X-Subject-Token"  # noqa: S105 - a header name
DEFAULT_TTL: Final = timedelta(hours=4)
MAX_ERROR_TEXT: Final = 300
MAX_SKEW: Final = 60
TIMEOUT: Final = aiohttp.ClientTimeout(total=30)
JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}


def scope_body(scope: Scope, account: str) -> dict[str, Any]:
    """The Keystone `scope` object for an account (domain) or project scope."""
    if scope.kind is ScopeKind.ACCOUNT:
        return {"domain": {"name": account}}
    if scope.project_id is not None:
        return {"project": {"id": scope.project_id}}
    return {"project": {"name": scope.project, "domain": {"name": account}}}


def _user(auth: AuthConfig) -> dict[str, Any]:
    return {"name": auth.username, "domain": {"name": auth.account}}


def password_body(auth: AuthConfig, scope: Scope, passcode: str | None = None) -> dict[str, Any]:
    """Password login, with a TOTP passcode in the same request when given."""
    identity: dict[str, Any] = {
        "methods": ["password"],
        "password": {"user": {**_user(auth), "password": auth.password.reveal()}},
    }
    if passcode is not None:
        identity["methods"].append("totp")
        identity["totp"] = {"user": {**_user(auth), "passcode": passcode}}
    return {"auth": {"identity": identity, "scope": scope_body(scope, auth.account)}}


def totp_body(auth: AuthConfig, scope: Scope, passcode: str) -> dict[str, Any]:
    """TOTP-only identity, sent with the receipt of a password login."""
    identity = {"methods": ["totp"], "totp": {"user": {**_user(auth), "passcode": passcode}}}
    return {"auth": {"identity": identity, "scope": scope_body(scope, auth.account)}}


def rescope_body(token: str, scope: Scope, account: str) -> dict[str, Any]:
    """Re-scope an existing token (Keystone `token` method)."""
    identity = {"methods": ["token"], "token": {"id": token}}
    return {"auth": {"identity": identity, "scope": scope_body(scope, account)}}


def parse_timestamp(text: str) -> datetime:
    """ISO-8601 as Keystone writes it (`Z` or `+00:00`, with or without microseconds), as UTC."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Reply:
    """An identity answer, read whole (they are small), with when we sent the request."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    sent_mono: float
    sent_wall: float

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or {} when it is not one."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def receipt(self) -> str | None:
        """The MFA receipt when this is a 'password accepted, TOTP needed' answer."""
        if self.status != 401:
            return None
        return self.headers.get(RECEIPT_HEADER) or (
            "" if "required_auth_methods" in self.json() else None)


def parse_token(reply: Reply, scope: Scope) -> Token:
    """Build a Token from a 201 reply; lifetime is `expires_at - issued_at` (server clock)."""
    value = reply.headers.get(SUBJECT_TOKEN_HEADER)  # CIMultiDict: any letter case
    if not value:
        raise IdentityError(f"identity answered {reply.status} without an X-Subject-Token "
                            "header", scope=str(scope))
    body = reply.json().get("token", {})
    issued = _server_now(reply, body)
    try:
        expires = parse_timestamp(body["expires_at"]) if body.get("expires_at") \
            else issued + DEFAULT_TTL
    except (TypeError, ValueError):
        raise IdentityError("identity sent an unreadable token expires_at",
                            scope=str(scope)) from None
    return Token(value=value, scope=scope, ttl=(expires - issued).total_seconds(),
                 received_mono=reply.sent_mono, received_wall=reply.sent_wall,
                 expires_at=expires, methods=tuple(body.get("methods") or ()))


def _server_now(reply: Reply, body: dict[str, Any]) -> datetime:
    """The server's time of issue: `issued_at`, else its Date header, else our clock."""
    try:
        if body.get("issued_at"):
            return parse_timestamp(body["issued_at"])
        if reply.headers.get("Date"):
            return parsedate_to_datetime(reply.headers["Date"]).astimezone(UTC)
    except (TypeError, ValueError):
        pass
    return datetime.fromtimestamp(reply.sent_wall, UTC)


def server_message(reply: Reply) -> str:
    """What identity said, from any of the known error shapes, shortened."""
    data = reply.json()
    error = data.get("error")
    text = (error.get("message") if isinstance(error, dict) else None) \
        or data.get("description") or data.get("message") \
        or reply.body[:MAX_ERROR_TEXT].decode("utf-8", "replace").strip() or "(empty body)"
    return " ".join(str(text).split())[:MAX_ERROR_TEXT]


def retry_after(headers: CIMultiDictProxy[str], now_wall: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date."""
    value = headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_wall)
    except (TypeError, ValueError):
        return None


class IdentityClient:
    """Logs in and re-scopes against the identity URL, sharing the proxy's client session."""

    def __init__(self, session: aiohttp.ClientSession, url: URL, auth: AuthConfig,
                 passcodes: PasscodeSource, clock: Clock, *,
                 remember: Callable[[str], None] = lambda _secret: None) -> None:
        self._session, self._url, self._auth = session, url, auth
        self._passcodes, self._clock = passcodes, clock
        self._remember = remember  # tells the log redactor about each new token
        self.clock_skew: float | None = None
        self._mfa_known = auth.mfa == "combined"

    async def login(self, scope: Scope) -> Token:
        """Password (+ TOTP) login for `scope`, following an MFA receipt when one comes."""
        passcode = await self._passcode(scope) if self._mfa_known else None
        reply = await self._post(password_body(self._auth, scope, passcode), scope)
        receipt = reply.receipt
        if receipt is not None and passcode is None:
            self._mfa_known = self._auth.mfa != "receipt"
            log.info("mfa_receipt", scope=str(scope))
            reply = await self._finish_with_totp(scope, receipt)
            passcode = "sent"
        if reply.status in (200, 201):
            return self._token(reply, scope)
        raise self._login_error(reply, scope, mfa=passcode is not None)

    async def _finish_with_totp(self, scope: Scope, receipt: str) -> Reply:
        """TOTP plus the receipt. The receipt proves the password right, so a refused code
        (already used by another process, or mistyped) gets one more try with a new code."""
        headers = {RECEIPT_HEADER: receipt} if receipt else {}
        for attempt in range(2):
            passcode = await self._passcode(scope)
            reply = await self._post(totp_body(self._auth, scope, passcode), scope, headers)
            if reply.status != 401 or attempt:
                break
            log.warning("totp_refused", scope=str(scope),
                        detail="the password was accepted; trying once more with a new code")
        return reply

    async def rescope(self, parent: Token, scope: Scope) -> Token:
        """A token for `scope` from `parent` (Keystone `token` method)."""
        reply = await self._post(rescope_body(parent.value, scope, self._auth.account), scope)
        if reply.status in (200, 201):
            return self._token(reply, scope)
        if reply.status == 429 or reply.status >= 500:
            raise self._unavailable(reply, scope)
        raise RescopeRefused(f"re-scoping to {scope} was refused with {reply.status}: "
                             f"{server_message(reply)}", scope=str(scope),
                             status_seen=reply.status)

    def _token(self, reply: Reply, scope: Scope) -> Token:
        token = parse_token(reply, scope)
        self._remember(token.value)
        return token

    @property
    def mfa_known(self) -> bool:
        """True once identity asked this user for a TOTP code (or MFA is configured)."""
        return self._mfa_known

    async def revoke(self, token: Token) -> bool:
        """Revoke `token` (Keystone DELETE on the identity URL); True when identity agreed."""
        headers = {"X-Auth-Token": token.value, SUBJECT_TOKEN_HEADER: token.value}
        try:
            async with self._session.delete(self._url, headers=headers, timeout=TIMEOUT,
                                            allow_redirects=False) as resp:
                return resp.status in (200, 204)
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _passcode(self, scope: Scope) -> str:
        try:
            return await self._passcodes.passcode()
        except MfaRequired as exc:
            exc.scope = str(scope)
            exc.message = f"login for {scope}: {exc.message}"
            raise

    async def _post(self, body: dict[str, Any], scope: Scope,
                    headers: dict[str, str] | None = None) -> Reply:
        sent_mono, sent_wall = self._clock.monotonic(), self._clock.wall()
        try:
            async with self._session.post(self._url, data=json.dumps(body).encode(),
                                          headers={**JSON_HEADERS, **(headers or {})},
                                          allow_redirects=False, timeout=TIMEOUT) as resp:
                payload = await resp.read()
                reply = Reply(resp.status, resp.headers, payload, sent_mono, sent_wall)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdentityUnavailable(
                f"cannot reach identity at {self._url}: {exc.__class__.__name__}",
                scope=str(scope)) from None
        self._check_skew(reply)
        return reply

    def _check_skew(self, reply: Reply) -> None:
        """Note how far our wall clock is from the server's `Date`; warn past MAX_SKEW."""
        try:
            server = parsedate_to_datetime(reply.headers["Date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return
        skew = round(reply.sent_wall - server)
        if abs(skew) > MAX_SKEW and (self.clock_skew is None or abs(skew - self.clock_skew) > 30):
            log.warning("clock_skew", seconds=skew, detail="our clock differs from identity's "
                        "Date header; token lifetimes are measured skew-free, but check NTP")
        self.clock_skew = skew

    def _login_error(self, reply: Reply, scope: Scope, *, mfa: bool) -> IdentityError:
        if reply.status == 429 or reply.status >= 500:
            return self._unavailable(reply, scope)
        said = server_message(reply)
        what = "password and TOTP code" if mfa else "password"
        hint = (f"check ZCOMPUTE_USERNAME ({self._auth.username}), ZCOMPUTE_ACCOUNT "
                f"({self._auth.account}), the {what}, and the project name; then "
                "restart or POST /_proxy/login")
        if reply.status == 404:
            hint = f"is {self._url} the identity URL? set ZCOMPUTE_IDENTITY_URL"
        return CredentialsRejected(
            f"login for {scope} was rejected by identity ({reply.status}): {said}; "
            "not retrying so the account is not locked", scope=str(scope), hint=hint)

    def _unavailable(self, reply: Reply, scope: Scope) -> IdentityUnavailable:
        return IdentityUnavailable(
            f"identity answered {reply.status} for {scope}: {server_message(reply)}",
            scope=str(scope), retry_after=retry_after(reply.headers, self._clock.wall()))
