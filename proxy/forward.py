"""The forwarding handler: route, inject the token, stream the request and the answer.

What the client sends reaches the upstream unchanged except for hop-by-hop headers, `Host`, the
client's own `X-Auth-Token` and our `X-Zcompute-Project` (both replaced by the injected token);
what the upstream answers reaches the client unchanged except for hop-by-hop headers. The raw
request target is sent as is (`yarl.URL(..., encoded=True)`), bodies stream both ways, nothing
is decompressed, no redirect is followed and no cookie is kept.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from proxy.routes import PROJECT_HEADER, Route, RouteTable
from proxy.scope import ScopeKind
from proxy.tokens import Token, TokenManager

log = structlog.get_logger("proxy.access")

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
REQUEST_ONLY_DROP: Final = frozenset({"host", "x-auth-token", PROJECT_HEADER.lower(), "expect"})
AUTH_HEADER: Final = "X-Auth-Token"
NO_BODY_STATUSES: Final = frozenset({204, 304})
CHUNK: Final = 64 * 1024
SENSITIVE_QUERY_KEYS: Final = ("token", "pass", "secret", "key", "code", "sig", "auth", "cred")


@dataclass(frozen=True, slots=True)
class Forwarder:
    """Everything the handler needs, built once at start-up."""

    session: aiohttp.ClientSession
    upstream: URL
    routes: RouteTable
    tokens: TokenManager
    replay_limit: int

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request; our own failures become a JSON error response."""
        started = time.perf_counter()
        route: Route | None = None
        token: Token | None = None
        try:
            route = self.routes.resolve(request.method, request.raw_path,
                                        request.headers.get(PROJECT_HEADER))
            if route.scope.kind is not ScopeKind.NONE:
                token = await self.tokens.get(route.scope)
            response = await self._exchange(request, route, token)
        except ProxyError as exc:
            response = error_response(exc)
        _access_log(request, route, token, response, started)
        return response

    async def _exchange(self, request: web.Request, route: Route,
                        token: Token | None) -> web.StreamResponse:
        await _continue_if_expected(request)
        body, replayable = await _request_body(request, self.replay_limit)
        url = URL(str(self.upstream).rstrip("/") + route.target, encoded=True)
        upstream = await self._send(request, url, body, token)
        if upstream.status == 401 and token is not None and replayable \
                and self.tokens.invalidate(token):
            upstream.release()
            token = await self.tokens.get(route.scope)
            upstream = await self._send(request, url, body, token)
        try:
            return await _relay(request, upstream)
        finally:
            upstream.release()

    async def _send(self, request: web.Request, url: URL, body: bytes | AsyncIterator[bytes]
                    | None, token: Token | None) -> aiohttp.ClientResponse:
        headers = upstream_headers(request.headers, token)
        try:
            return await self.session.request(request.method, url, headers=headers, data=body,
                                              allow_redirects=False)
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"the upstream did not answer {request.method} in time") \
                from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"cannot reach the upstream {url.origin()}: "
                                f"{exc.__class__.__name__}") from None


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names nominated as hop-by-hop by the Connection header."""
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(name.strip().lower() for name in value.split(",") if name.strip())
    return listed


def _filtered(headers: CIMultiDictProxy[str], drop: Iterable[str]) -> CIMultiDict[str]:
    dropped = HOP_BY_HOP.union(drop, connection_listed(headers))
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def upstream_headers(headers: CIMultiDictProxy[str], token: Token | None) -> CIMultiDict[str]:
    """The client's headers in order, minus hop-by-hop and ours, plus the token."""
    out = _filtered(headers, REQUEST_ONLY_DROP)
    if token is not None:
        out[AUTH_HEADER] = token.value
    return out


async def _continue_if_expected(request: web.Request) -> None:
    """Answer `Expect: 100-continue` only now that a token is ready (see app's expect hook)."""
    if request.version >= aiohttp.HttpVersion11 and \
            request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


async def _request_body(request: web.Request,
                        replay_limit: int) -> tuple[bytes | AsyncIterator[bytes] | None, bool]:
    """The body to send: None, small known-length bytes (replayable), or a stream."""
    if not request.body_exists:
        return None, True
    length = request.content_length
    if length is not None and length <= replay_limit:
        return await request.read(), True
    return _stream(request.content), False


async def _stream(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    async for chunk in content.iter_chunked(CHUNK):
        yield chunk


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Stream the upstream answer to the client; abort the client if the upstream breaks off."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=_filtered(upstream.headers, ()))
    await response.prepare(request)
    if request.method == "HEAD" or upstream.status in NO_BODY_STATUSES:
        await response.write_eof()
        return response
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError, ConnectionError) as exc:
        _abort(request, upstream, exc)
        return response
    await response.write_eof()
    return response


def _abort(request: web.Request, upstream: aiohttp.ClientResponse, exc: Exception) -> None:
    """A broken stream: drop both connections so no one mistakes it for a complete answer."""
    upstream.close()
    client_gone = isinstance(exc, ConnectionError)
    (log.info if client_gone else log.warning)(
        "client_disconnected" if client_gone else "upstream_broke_off",
        path=request.path, error=exc.__class__.__name__,
        sent=upstream.content.total_bytes, expected=upstream.content_length)
    if request.transport is not None:
        request.transport.abort()


def error_response(exc: ProxyError) -> web.Response:
    """Our JSON error body for a `ProxyError`."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.json_response(exc.to_json(), status=exc.status, headers=headers)


def loggable_target(raw: str) -> str:
    """The request target with the values of secret-looking query keys masked."""
    path, sep, query = raw.partition("?")
    if not sep:
        return path
    parts = []
    for item in query.split("&"):
        key, eq, _value = item.partition("=")
        masked = eq and any(word in key.lower() for word in SENSITIVE_QUERY_KEYS)
        parts.append(f"{key}=***" if masked else item)
    return f"{path}?{'&'.join(parts)}"


def _access_log(request: web.Request, route: Route | None, token: Token | None,
                response: web.StreamResponse, started: float) -> None:
    log.info("request", method=request.method, target=loggable_target(request.raw_path),
             scope=str(route.scope) if route else None, status=response.status,
             ms=round((time.perf_counter() - started) * 1000, 2),
             bytes=response.body_length, token=token.fingerprint if token else None)
