"""Small scripted servers for the token-lifecycle rows of bug-cases.md: K (a Keystone-style
identity whose answers a test scripts) and U (an upstream that records the tokens it sees).

Both are real aiohttp servers on loopback; the proxy talks to them over HTTP like to the real
thing. They share a controllable FakeClock with the proxy where a row needs one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass
class FakeClock:
    """A clock the test moves by hand; `wall` in epoch seconds."""

    wall_now: float
    mono_now: float = 1000.0

    def monotonic(self) -> float:
        """The fake monotonic reading."""
        return self.mono_now

    def wall(self) -> float:
        """The fake wall-clock reading."""
        return self.wall_now

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self.wall_now += seconds
        self.mono_now += seconds


def at(text: str) -> float:
    """Epoch seconds of an ISO-8601 UTC time like `2026-12-03T16:00:00Z`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float, suffix: str = "Z") -> str:
    """Keystone-style timestamp with microseconds and the given UTC suffix."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + suffix


@dataclass
class ScriptedKeystone:
    """`POST /v3/auth/tokens` → 201 with TOK-A, TOK-B, ...; lifetimes and failures scripted.

    `lifetimes` gives each password login's lifetime in turn (the last one repeats);
    `failures` maps a call number (1-based) to an HTTP status to answer instead.
    Re-scoped tokens keep their parent's expiry, as Keystone does.
    """

    clock: FakeClock
    lifetimes: list[float] = field(default_factory=lambda: [3600.0])
    suffix: str = "Z"
    failures: dict[int, int] = field(default_factory=dict)
    refuse_project_names: bool = False
    delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    expiry: dict[str, float] = field(default_factory=dict)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/v3/auth/tokens", self._auth)
        return app

    @property
    def logins(self) -> int:
        """Calls that used the password method."""
        return sum("password" in c["auth"]["identity"]["methods"] for c in self.calls)

    async def _auth(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        self.headers_seen.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.failures.get(len(self.calls))
        if status is not None:
            return _error(status, "scripted failure")
        scope = body["auth"].get("scope", {})
        if self.refuse_project_names and "name" in scope.get("project", {}):
            return _error(400, "Expecting to find domain in project.")
        return self._issue(body["auth"]["identity"], scope)

    def _issue(self, identity: dict[str, Any], scope: dict[str, Any]) -> web.Response:
        now = self.clock.wall()
        if "token" in identity["methods"]:
            expires = self.expiry[identity["token"]["id"]]
        else:
            index = min(self.logins, len(self.lifetimes)) - 1
            expires = now + self.lifetimes[index]
        token = f"TOK-{chr(ord('A') + len(self.expiry))}"
        self.expiry[token] = expires
        body = {"token": {"methods": identity["methods"], "issued_at": iso(now, self.suffix),
                          "expires_at": iso(expires, self.suffix), **scope}}
        return web.json_response(body, status=201, headers={"X-Subject-Token": token})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message}}, status=status)


@dataclass
class RecordingUpstream:
    """Answers 200 `{"ok": true}`, or 401 for refused tokens; records each token it sees."""

    clock: FakeClock | None = None
    refuse: set[str] = field(default_factory=set)
    refuse_all: bool = False
    seen: list[tuple[str | None, float]] = field(default_factory=list)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    @property
    def tokens(self) -> list[str | None]:
        """The X-Auth-Token of each request, in order."""
        return [token for token, _ in self.seen]

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token")
        await request.read()
        self.seen.append((token, self.clock.wall() if self.clock else 0.0))
        if self.refuse_all or token in self.refuse:
            return web.Response(status=401, text=json.dumps({"error": {"code": 401}}),
                                content_type="application/json")
        return web.json_response({"ok": True, "token_seen": token is not None})
