"""Tokens and the token manager: cached per scope, single-flight, renewed ahead of expiry.

Life of a token:
- The account token comes from a login; project tokens are re-scoped from a fresh account token
  (no second password or TOTP), falling back to a project login if identity refuses re-scoping.
- A token is never handed out with less than `floor` seconds left (by both our monotonic and wall
  clocks, so a laptop that slept does not send an expired token). From `renew_at` seconds left
  on, the next request starts one background renewal and keeps using the current token.
- Credentials rejected: the manager latches the error and makes no further login until
  `reset()`; identity unavailable: the waiters share the failure and a backoff delays the next
  attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import cachetools
import structlog

from proxy.clock import Clock, SystemClock
from proxy.errors import (
    CredentialsRejected,
    IdentityError,
    IdentityUnavailable,
    ProjectRefused,
    ProxyError,
    RescopeRefused,
)
from proxy.scope import ACCOUNT, Scope, ScopeKind
from proxy.secret import fingerprint

log = structlog.get_logger("proxy.tokens")

DEFAULT_MIN_MARGIN: Final = 300.0
MARGIN_FRACTION: Final = 0.10
MARGIN_CAP_FRACTION: Final = 0.20
RENEW_JITTER: Final = 0.10
REJECTION_INTERVAL: Final = 10.0
PROJECT_REFUSAL_SECONDS: Final = 60.0
MAX_SCOPES: Final = 256


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Token:
    """An issued token. `ttl` is `expires_at - issued_at` by the server's own clock."""

    value: str = field(repr=False)
    scope: Scope
    ttl: float
    received_mono: float
    received_wall: float
    expires_at: datetime
    methods: tuple[str, ...] = ()
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.value))

    def remaining(self, clock: Clock) -> float:
        """Seconds left: the smaller of the monotonic and the wall-clock reading."""
        by_mono = self.received_mono + self.ttl - clock.monotonic()
        by_wall = self.received_wall + self.ttl - clock.wall()
        return min(by_mono, by_wall)

    def age(self, clock: Clock) -> float:
        """Seconds since we received it."""
        return clock.monotonic() - self.received_mono


class Issuer(Protocol):
    """What the manager needs from identity."""

    async def login(self, scope: Scope) -> Token:
        """A new token for `scope` from the configured credentials."""

    async def rescope(self, parent: Token, scope: Scope) -> Token:
        """A token for `scope` from a valid `parent` token; `RescopeRefused` if not allowed."""


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """When to renew. An explicit `margin` is the floor; else max(5 min, 10%), capped at 20%."""

    margin: float | None = None

    def floor(self, ttl: float) -> float:
        """Never hand out a token with less than this many seconds left."""
        if self.margin is not None:
            return self.margin
        return min(max(DEFAULT_MIN_MARGIN, MARGIN_FRACTION * ttl), MARGIN_CAP_FRACTION * ttl)

    def renew_at(self, ttl: float) -> float:
        """Start a background renewal at this many seconds left (twice the floor, jittered)."""
        jitter = random.uniform(0, RENEW_JITTER)  # noqa: S311 - spreading load, not security
        return self.floor(ttl) * (2.0 - jitter)


@dataclass(frozen=True, slots=True)
class _Entry:
    token: Token
    floor: float
    renew_at: float


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    until: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What `/_proxy/status` shows of one cached scope: never the token itself."""

    scope: str
    fingerprint: str
    expires_at: str
    seconds_left: float
    renews_in: float
    methods: tuple[str, ...]


class TokenManager:
    """Hands out a live token per scope; owns every login, re-scope and renewal task."""

    def __init__(self, issuer: Issuer, *, policy: RenewalPolicy | None = None,
                 clock: Clock | None = None, backoff_base: float = 1.0,
                 backoff_max: float = 60.0) -> None:
        self._issuer = issuer
        self._policy = policy or RenewalPolicy()
        self._clock = clock or SystemClock()
        self._cache: cachetools.TLRUCache[Scope, _Entry] = cachetools.TLRUCache(
            maxsize=MAX_SCOPES, ttu=self._time_to_use, timer=self._clock.monotonic)
        self._inflight: dict[Scope, asyncio.Task[_Entry]] = {}
        self._backoff: dict[Scope, _Backoff] = {}
        self._latched: dict[Scope, ProxyError] = {}  # the account's login: until reset()
        self._refused: cachetools.TTLCache[Scope, ProxyError] = cachetools.TTLCache(
            maxsize=MAX_SCOPES, ttl=PROJECT_REFUSAL_SECONDS, timer=self._clock.monotonic)
        self._rejected: dict[Scope, float] = {}
        self._confirmed: dict[Scope, Token] = {}
        self._rescope_unsupported = False
        self._backoff_base, self._backoff_max = backoff_base, backoff_max
        self.listeners: list[Callable[[str, Scope, dict[str, Any]], None]] = []

    @staticmethod
    def _time_to_use(_scope: Scope, entry: _Entry, now: float) -> float:
        return now + entry.token.ttl - entry.floor

    async def get(self, scope: Scope) -> Token:
        """A token for `scope` with at least the floor left; may wait for one login."""
        entry = self._cache.get(scope)
        if entry is not None:
            left = entry.token.remaining(self._clock)
            if left > entry.floor:
                if left <= entry.renew_at:
                    self._renew_in_background(scope)
                return entry.token
        return (await self._shared_issue(scope)).token

    def invalidate(self, token: Token) -> bool:
        """Drop `token` after the upstream refused it; True if the caller may retry.

        Only the cached token is dropped (a late 401 for an older token keeps the newer one).
        A token the upstream never accepted is dropped at most once per scope every
        REJECTION_INTERVAL seconds, so an upstream that refuses every token cannot drive a
        login per request; one it did accept (then revoked) is always dropped.
        """
        entry = self._cache.get(token.scope)
        if entry is None or entry.token is not token:
            return True  # already dropped or replaced: the caller's retry gets the newer one
        now = self._clock.monotonic()
        worked_before = self._confirmed.get(token.scope) is token  # so it was revoked since
        last = self._rejected.get(token.scope, -REJECTION_INTERVAL)
        if not worked_before and now - last < REJECTION_INTERVAL:
            return False
        self._rejected[token.scope] = now
        del self._cache[token.scope]
        self._emit("invalidated", token.scope, fingerprint=token.fingerprint)
        return True

    def confirm(self, token: Token) -> None:
        """The upstream accepted `token`: a later 401 for it means it was revoked."""
        self._confirmed[token.scope] = token

    def renew_now(self, scope: Scope = ACCOUNT) -> asyncio.Task[_Entry]:
        """Clear latches and start a renewal of `scope` at once (an operator's 'login')."""
        self.reset()
        self._rejected.clear()
        task = self._inflight.get(scope) or self._start_issue(scope)
        task.add_done_callback(_consume_exception)  # the caller may not wait for the result
        return task

    def replace_issuer(self, issuer: Issuer) -> None:
        """Use new credentials: forget every token, latch and backoff."""
        self._issuer = issuer
        self._cache.clear()
        self.reset()

    def reset(self) -> None:
        """Forget latched failures and backoffs (credentials changed or an operator asked)."""
        self._latched.clear()
        self._refused.clear()
        self._backoff.clear()

    def cached(self) -> list[Token]:
        """The cached tokens, project tokens first (revoke order)."""
        tokens = [entry.token for entry in list(self._cache.values())]
        return sorted(tokens, key=lambda t: t.scope.kind is ScopeKind.ACCOUNT)

    def renews_in(self, scope: Scope) -> float | None:
        """Seconds until `scope`'s token is due for renewal; None if none is cached."""
        entry = self._cache.get(scope)
        if entry is None:
            return None
        return max(0.0, entry.token.remaining(self._clock) - entry.renew_at)

    def latched(self) -> dict[Scope, ProxyError]:
        """Scopes whose login failed definitively, with the error."""
        return {**self._latched, **dict(self._refused.items())}

    def status(self) -> list[TokenStatus]:
        """The cached tokens, for the status endpoint."""
        rows = []
        for scope, entry in list(self._cache.items()):
            left = entry.token.remaining(self._clock)
            rows.append(TokenStatus(
                scope=str(scope), fingerprint=entry.token.fingerprint,
                expires_at=entry.token.expires_at.isoformat(), seconds_left=round(left, 1),
                renews_in=round(max(0.0, left - entry.renew_at), 1),
                methods=entry.token.methods))
        return rows

    async def close(self) -> None:
        """Cancel every login and renewal in flight."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ProxyError):
                await task

    def _live(self, scope: Scope) -> _Entry | None:
        entry = self._cache.get(scope)
        if entry is not None and entry.token.remaining(self._clock) > entry.floor:
            return entry
        return None

    def _renew_in_background(self, scope: Scope) -> None:
        if scope in self._inflight or self._blocked(scope) is not None:
            return
        task = self._start_issue(scope)
        task.add_done_callback(_consume_exception)

    async def _shared_issue(self, scope: Scope) -> _Entry:
        blocked = self._blocked(scope)
        if blocked is not None:
            raise blocked
        task = self._inflight.get(scope) or self._start_issue(scope)
        return await asyncio.shield(task)

    def _start_issue(self, scope: Scope) -> asyncio.Task[_Entry]:
        task = asyncio.create_task(self._issue(scope), name=f"token:{scope}")
        self._inflight[scope] = task
        task.add_done_callback(lambda _t: self._inflight.pop(scope, None))
        return task

    def _blocked(self, scope: Scope) -> ProxyError | None:
        latched = self._latched.get(ACCOUNT) or self._refused.get(scope)
        if latched is not None:
            return latched
        backoff = self._backoff.get(scope)
        wait = backoff.until - self._clock.monotonic() if backoff else 0.0
        if wait > 0:
            return IdentityUnavailable(f"identity failed recently for {scope}; not retrying yet",
                                       scope=str(scope), retry_after=wait)
        return None

    async def _issue(self, scope: Scope) -> _Entry:
        started = self._clock.monotonic()
        try:
            token = await self._obtain(scope)
        except IdentityUnavailable as exc:
            self._note_unavailable(scope, exc)
            raise
        except CredentialsRejected as exc:
            self._remember_refusal(scope, exc)
            raise
        self._backoff.pop(scope, None)
        entry = self._store(token)
        self._emit("issued", scope, fingerprint=token.fingerprint, ttl=round(token.ttl),
                   took_ms=round((self._clock.monotonic() - started) * 1000, 1))
        return entry

    def _remember_refusal(self, scope: Scope, exc: CredentialsRejected) -> None:
        """The account's rejection latches; a project's is kept for a minute (bounded)."""
        if scope.kind is ScopeKind.ACCOUNT:
            self._latched[scope] = exc
            self._emit("latched", scope, error=exc.message)
        else:
            self._refused[scope] = exc
            self._emit("project_refused", scope, error=exc.message)

    async def _obtain(self, scope: Scope) -> Token:
        if scope.kind is ScopeKind.ACCOUNT or self._rescope_unsupported:
            return await self._fresh_login(scope)
        for attempt in range(2):
            parent = await self._fresh_parent()
            try:
                return await self._issuer.rescope(parent.token, scope)
            except RescopeRefused as exc:
                self._emit("rescope_refused", scope, error=exc.message, status=exc.status_seen)
                if exc.status_seen == 404 and not attempt:
                    self._drop(parent.token)  # Keystone: 404 = the parent token is invalid
                    continue
                if exc.status_seen == 401:  # Keystone: no such project, or no role in it
                    raise ProjectRefused(
                        f"identity gives no token for {scope}: the project does not exist or "
                        f"the user has no role in it ({exc.message})", scope=str(scope),
                        hint="check the project name (ZCOMPUTE_PROJECT or X-Zcompute-Project)"
                    ) from None
                self._rescope_unsupported = exc.status_seen in (400, 403, 405, 501)
                break
        return await self._fresh_login(scope)  # this identity does not re-scope tokens

    def _drop(self, token: Token) -> None:
        entry = self._cache.get(token.scope)
        if entry is not None and entry.token is token:
            del self._cache[token.scope]

    async def _fresh_parent(self) -> _Entry:
        """An account token that is not due for renewal (a child inherits its expiry)."""
        entry = self._live(ACCOUNT)
        if entry is not None and entry.token.remaining(self._clock) > entry.renew_at:
            return entry
        return await self._shared_issue(ACCOUNT)

    async def _fresh_login(self, scope: Scope) -> Token:
        """Log in; a token that arrives with less than the floor left is tried once more."""
        token = await self._issuer.login(scope)
        floor = self._policy.floor(token.ttl)
        if token.remaining(self._clock) > floor or self._policy.margin is None:
            return token
        self._emit("short_token", scope, seconds_left=round(token.remaining(self._clock)))
        token = await self._issuer.login(scope)
        if token.remaining(self._clock) <= floor:
            raise IdentityError(
                f"identity issues tokens with {token.remaining(self._clock):.0f} s left, less "
                f"than tokens.renew_margin ({floor:.0f} s)", scope=str(scope),
                hint="lower tokens.renew_margin (ZCOMPUTE_RENEW_MARGIN)")
        return token

    def _store(self, token: Token) -> _Entry:
        floor = self._policy.floor(token.ttl)
        entry = _Entry(token, floor, max(self._policy.renew_at(token.ttl), floor))
        self._cache[token.scope] = entry
        return entry

    def _note_unavailable(self, scope: Scope, exc: IdentityUnavailable) -> None:
        backoff = self._backoff.setdefault(scope, _Backoff())
        backoff.failures += 1
        delay = min(self._backoff_max, self._backoff_base * 2 ** (backoff.failures - 1))
        delay = max(delay * random.uniform(0.5, 1.0), exc.retry_after or 0.0)  # noqa: S311
        backoff.until = self._clock.monotonic() + delay
        exc.retry_after = delay
        self._emit("identity_unavailable", scope, error=exc.message, retry_in=round(delay, 1))

    def _emit(self, event: str, scope: Scope, **fields: Any) -> None:
        level = "warning" if event in ("latched", "identity_unavailable", "short_token") else "info"
        getattr(log, level)(f"token_{event}", scope=str(scope), **fields)
        for listener in self.listeners:
            listener(event, scope, fields)


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """Background renewals report through logs; mark their exception as retrieved."""
    if not task.cancelled():
        task.exception()
