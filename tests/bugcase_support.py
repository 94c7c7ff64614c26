"""Shared pieces of the bug-case tests (tests/test_bugcase_*.py): the proxy in front of a
scripted upstream, a minimal Keystone-style identity, and log capture.

Identity comes from the built-in simulator unless a row needs a scripted one (`KeystoneStub`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from tests.conftest import ProxyFactory, SimulatorFactory, base_url, proxy_config
from tests.rawhttp import RawRequest, RawUpstream, Responder, response_bytes


async def proxy_to(start_simulator: SimulatorFactory | None, start_proxy: ProxyFactory,
                   upstream: str, *, identity_url: str | None = None, routes: tuple[str, ...] = (),
                   **upstream_changes: Any) -> TestServer:
    """The proxy in front of `upstream`, logging in at the simulator (or `identity_url`);
    `upstream_changes` override `UpstreamConfig` fields such as `read_timeout`."""
    if identity_url is None:
        assert start_simulator is not None
        sim = await start_simulator()
        identity_url = f"{base_url(sim)}/api/v2/identity/auth"
    config = proxy_config(upstream, env={"ZCOMPUTE_IDENTITY_URL": identity_url},
                          routes=routes)
    if upstream_changes:
        config = dataclasses.replace(
            config, upstream=dataclasses.replace(config.upstream, **upstream_changes))
    return await start_proxy(config)


@contextlib.asynccontextmanager
async def raw_upstream(respond: Responder) -> AsyncIterator[RawUpstream]:
    """A started `RawUpstream`, closed on exit."""
    upstream = await RawUpstream(respond).start()
    try:
        yield upstream
    finally:
        await upstream.close()


def request_bytes(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    """A request exactly as given (add `Content-Length` yourself when there is a body)."""
    return "\r\n".join((f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers)
                       ).encode("latin-1") + b"\r\n\r\n" + body


@dataclass
class KeystoneStub:
    """K: answers every `POST` with 201, `token_header: <next token>` and a one-hour token."""

    token_header: str = "X-Subject-Token"
    tokens: list[str] = field(default_factory=lambda: ["TOK-A", "TOK-B", "TOK-C"])
    posts: list[RawRequest] = field(default_factory=list)

    async def respond(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        """The Responder for a RawUpstream."""
        if not request.request_line.startswith("POST "):
            writer.write(response_bytes("204 No Content"))
            return
        self.posts.append(request)
        now = datetime.now(UTC)
        body = json.dumps({"token": {
            "issued_at": now.isoformat(), "expires_at": (now + timedelta(hours=1)).isoformat(),
            "methods": ["password"]}}).encode()
        token = self.tokens[min(len(self.posts), len(self.tokens)) - 1]
        writer.write(response_bytes("201 Created", (
            f"{self.token_header}: {token}", "Content-Type: application/json",
            f"Content-Length: {len(body)}"), body))
        await writer.drain()


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog events emitted inside the block, as dicts with `event` and `log_level`."""
    with capture_logs() as events:
        yield events


def events_named(events: list[MutableMapping[str, Any]],
                 name: str) -> list[MutableMapping[str, Any]]:
    """The captured events whose `event` is `name`."""
    return [event for event in events if event.get("event") == name]


async def until(condition: Callable[[], bool], limit_s: float, step: float = 0.01) -> None:
    """Return once `condition()` holds; TimeoutError after `limit_s` seconds."""
    for _ in range(max(1, round(limit_s / step))):
        if condition():
            return
        await asyncio.sleep(step)
    if not condition():
        raise TimeoutError(f"condition not met within {limit_s} s")
