"""The forwarding handler: route, inject the token, stream the request and the answer.

What the client sends reaches the upstream unchanged except for hop-by-hop headers, `Host`, the
client's own `X-Auth-Token` and our `X-Zcompute-Project` (both replaced by the injected token);
what the upstream answers reaches the client unchanged except for hop-by-hop headers. The raw
request target is sent as is (`yarl.URL(..., encoded=True)`), bodies stream both ways, nothing
is decompressed, no redirect is followed and no cookie is kept.

A response the upstream breaks off (short body, reset, read-idle timeout) is never finished
for the client: its connection is aborted so the short read shows. A client that goes away
cancels the upstream exchange (the server runs with handler cancellation). WebSocket upgrades
are handed to `proxy.websocket`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import scrub, websocket
from proxy.config import DEFAULT_MAX_HEADER_SIZE
from proxy.errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics
from proxy.routes import PROJECT_HEADER, Route, RouteTable
from proxy.scope import Scope, ScopeKind
from proxy.tokens import Token, TokenManager

log = structlog.get_logger("proxy.access")

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
REQUEST_ONLY_DROP: Final = frozenset({"host", "x-auth-token", PROJECT_HEADER.lower(), "expect"})
REQUEST_DROP: Final = HOP_BY_HOP | REQUEST_ONLY_DROP
AUTH_HEADER: Final = "X-Auth-Token"
NO_BODY_STATUSES: Final = frozenset({204, 304})
CHUNK: Final = 64 * 1024
SENSITIVE_QUERY_KEYS: Final = ("token", "pass", "secret", "key", "code", "sig", "auth", "cred")
REQUEST_ID_HEADER: Final = "X-Request-Id"
UPSTREAM_SECONDS: Final = web.RequestKey("upstream_seconds", float)  # 0.0: not sent


class TokenRejected(ProxyError):
    """The upstream refused our token after a streamed body had been sent: not resent."""

    status = 401
    code = "token_rejected"

    def __init__(self, scope: Scope, *, renewed: bool) -> None:
        super().__init__(
            f"zCompute refused the {scope} token (401) after the request body had been "
            "streamed to it; a streamed body is never sent twice", scope=str(scope),
            hint="the token is being renewed: send the request again" if renewed else
            "zCompute refuses even fresh tokens: check your role in this project")


class HeaderTooLarge(BadRequest):
    """A request header line is longer than `proxy.max_header_size`."""

    status = 431
    code = "header_too_large"


@dataclass(frozen=True, slots=True)
class Forwarder:
    """Everything the handler needs, built once at start-up."""

    session: aiohttp.ClientSession
    upstream: URL
    routes: RouteTable
    tokens: TokenManager
    replay_limit: int
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    metrics: Metrics | None = None
    base: str = field(init=False)  # the upstream URL as text, without a trailing slash

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", str(self.upstream).rstrip("/"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request; our own failures become a JSON error response."""
        started = time.perf_counter()
        request[UPSTREAM_SECONDS] = 0.0
        route: Route | None = None
        token: Token | None = None
        try:
            check_header_sizes(request, self.max_header_size)
            route = self.routes.resolve(request.method, request.raw_path,
                                        request.headers.get(PROJECT_HEADER))
            if route.scope.kind is not ScopeKind.NONE:
                token = await self.tokens.get(route.scope)
            response, token = await self._exchange(request, route, token)
        except ProxyError as exc:
            response = refusal(request, exc)
        except asyncio.CancelledError:
            _log_cancelled(request)
            raise
        elapsed = time.perf_counter() - started
        _access_log(request, route, token, response, elapsed)
        if self.metrics is not None:
            self.metrics.request(
                route.scope.kind.value if route else "refused", request.method,
                response.status, total=elapsed, upstream=request[UPSTREAM_SECONDS],
                body_bytes=response.body_length, upload_bytes=request.content.total_bytes)
        return response

    async def _exchange(self, request: web.Request, route: Route, token: Token | None,
                        ) -> tuple[web.StreamResponse, Token | None]:
        """Send the request and relay the answer; also the token finally used (after a 401
        the request may have been replayed with a new one)."""
        url = URL(self.base + route.target, encoded=True)
        if is_websocket_upgrade(request):
            headers = upstream_headers(request.headers, token)
            return await websocket.relay(request, self.session, url, headers), token
        if expects_continue(request):
            await _send_continue(request)
        body, replayable = await _request_body(request, self.replay_limit) \
            if request.body_exists else (None, True)
        upstream = await self._send(request, url, body, token)
        if upstream.status == 401 and token is not None:
            retry = self.tokens.invalidate(token)
            if not replayable:
                upstream.release()
                return error_response(TokenRejected(route.scope, renewed=retry)), token
            if retry:
                upstream.release()
                token = await self.tokens.get(route.scope)
                upstream = await self._send(request, url, body, token)
        if token is not None and upstream.status != 401:
            self.tokens.confirm(token)
        try:
            return await _relay(request, upstream), token
        finally:
            upstream.release()

    async def _send(self, request: web.Request, url: URL, body: bytes | AsyncIterator[bytes]
                    | None, token: Token | None) -> aiohttp.ClientResponse:
        headers = upstream_headers(request.headers, token)
        sent = time.perf_counter()
        try:
            response = await self.session.request(request.method, url, headers=headers,
                                                  data=body, allow_redirects=False)
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"the upstream did not answer {request.method} in time") \
                from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _upstream_failure(exc, url, self.max_header_size) from None
        request[UPSTREAM_SECONDS] = time.perf_counter() - sent
        return response


def _upstream_failure(exc: Exception, url: URL, limit: int) -> UpstreamError:
    """The error for an upstream exchange that failed before a response head was read."""
    if _caused_by(exc, LineTooLong):
        log.warning("upstream_header_too_large", upstream=str(url.origin()), limit=limit)
        return UpstreamError(f"the upstream sent a header line longer than "
                             f"proxy.max_header_size ({limit} bytes)")
    if _caused_by(exc, HttpProcessingError):
        log.warning("upstream_invalid_response", upstream=str(url.origin()))
        return UpstreamError(f"the upstream {url.origin()} sent an invalid HTTP response")
    return UpstreamError(f"cannot reach the upstream {url.origin()}: "
                         f"{exc.__class__.__name__}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True if `exc` or anything in its `__cause__` chain is a `kind`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__
    return False


def check_header_sizes(request: web.Request, limit: int) -> None:
    """Raise `HeaderTooLarge` naming the first header line (`Name: value`) over `limit`.

    The server's parser accepts lines up to twice the limit (see `app.runner_options`) so
    that this check, not a parse error, answers the common case with a clear 431.
    """
    for name, value in request.raw_headers:
        if len(name) + len(value) + 2 > limit:
            header = name.decode("latin-1")
            log.info("request_header_too_large", header=header, limit=limit)
            raise HeaderTooLarge(f"the request header {header} is longer than "
                                 f"proxy.max_header_size ({limit} bytes)",
                                 hint="send a shorter header or raise proxy.max_header_size")


def is_websocket_upgrade(request: web.Request) -> bool:
    """A `GET` asking to switch to the WebSocket protocol."""
    headers = request.headers
    return request.method == "GET" and "Upgrade" in headers \
        and headers.getone("Upgrade").strip().lower() == "websocket" \
        and "upgrade" in connection_listed(headers)


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names nominated as hop-by-hop by the Connection header."""
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(name.strip().lower() for name in value.split(",") if name.strip())
    return listed


def _filtered(headers: CIMultiDictProxy[str], dropped: frozenset[str]) -> CIMultiDict[str]:
    """`headers` without the (lower-case) names in `dropped` and those Connection lists."""
    if "Connection" in headers:
        dropped = dropped.union(connection_listed(headers))
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in dropped])


def upstream_headers(headers: CIMultiDictProxy[str], token: Token | None) -> CIMultiDict[str]:
    """The client's headers in order, minus hop-by-hop and ours, plus the token."""
    out = _filtered(headers, REQUEST_DROP)
    if token is not None:
        out[AUTH_HEADER] = token.value
    return out


def expects_continue(request: web.Request) -> bool:
    """An HTTP/1.1 request waiting for `100 Continue` before it sends its body."""
    return "Expect" in request.headers and request.version >= aiohttp.HttpVersion11 and \
        request.headers.getone("Expect").strip().lower() == "100-continue"


async def _send_continue(request: web.Request) -> None:
    """Answer `Expect: 100-continue` only now that a token is ready (see app's expect hook)."""
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


class _WholeBody(web.StreamResponse):
    """An answer whose body is all there already: its head leaves with the body in one write,
    not in a write of its own ahead of it (aiohttp's switch, as its own `Response` sets it;
    should it go away, the head is merely sent first again)."""

    _send_headers_immediately = False


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Stream the upstream answer to the client; abort the client if the upstream breaks off."""
    headers = _filtered(upstream.headers, HOP_BY_HOP)
    if request.method == "HEAD" or upstream.status in NO_BODY_STATUSES:
        _close_if_framed(upstream)  # before any await: nobody else has its connection yet
        return await _send_whole(request, upstream, headers, b"")
    if scrub.scrubbable(request.method, upstream.status, upstream.headers):
        small_error = await scrub.error_body(request.method, upstream, headers)
        return await _send_whole(request, upstream, headers, small_error or b"")
    if upstream.content.is_eof():  # a small answer arrived whole with its head
        return await _send_whole(request, upstream, headers, upstream.content.read_nowait())
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=headers)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError, ConnectionError) as exc:
        _abort(request, upstream, exc)
        return response
    except asyncio.CancelledError:
        upstream.close()
        raise
    await response.write_eof()
    return response


async def _send_whole(request: web.Request, upstream: aiohttp.ClientResponse,
                      headers: CIMultiDict[str], body: bytes) -> web.StreamResponse:
    """Answer with the upstream's status and `headers`, and `body` in the same write."""
    response = _WholeBody(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    await response.write_eof(body)
    return response


def _close_if_framed(upstream: aiohttp.ClientResponse) -> None:
    """A 204/304 that announced a body (chunked, or a length on a 204) may be followed by
    stray body bytes that would desync its connection: close it rather than reuse it.

    aiohttp has already put a bodiless answer's connection back in the pool, so it is closed
    through the response's protocol (private in aiohttp; skipped if that ever changes).
    """
    if upstream.method == "HEAD":
        return
    length = upstream.headers.get("Content-Length", "0").strip()
    if "Transfer-Encoding" in upstream.headers or (upstream.status == 204 and length != "0"):
        upstream.close()
        protocol = getattr(upstream, "_protocol", None)
        if protocol is not None:
            protocol.close()


def _abort(request: web.Request, upstream: aiohttp.ClientResponse, exc: Exception) -> None:
    """A broken stream: drop both connections so no one mistakes it for a complete answer."""
    upstream.close()
    if isinstance(exc, ConnectionError):
        log.info("client_disconnected", path=request.path, error=exc.__class__.__name__,
                 relayed=upstream.content.total_bytes)
    else:
        event = "upstream_read_timeout" if isinstance(exc, aiohttp.ServerTimeoutError) \
            else "upstream_broke_off"
        log.warning(event, path=request.path, error=exc.__class__.__name__,
                    received=upstream.content.total_bytes, expected=upstream.content_length)
    if request.transport is not None:
        request.transport.abort()


def _log_cancelled(request: web.Request) -> None:
    """The handler was cancelled: the client went away (or the server is stopping)."""
    transport = request.transport
    gone = transport is None or transport.is_closing()
    log.info("client_disconnected" if gone else "request_cancelled", path=request.path)


def refusal(request: web.Request, exc: ProxyError) -> web.Response:
    """`error_response`, closing the connection when the request body was never read: a
    client that sent `Expect: 100-continue` will not send it now."""
    response = error_response(exc)
    if expects_continue(request) and not request.content.is_eof():
        response.force_close()
    return response


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
                response: web.StreamResponse, elapsed: float) -> None:
    """One line per request; the request id is the client's `X-Request-Id` or a new one."""
    log.info("request", method=request.method, target=loggable_target(request.raw_path),
             scope=str(route.scope) if route else None, status=response.status,
             ms=round(elapsed * 1000, 2), bytes=response.body_length,
             token=token.fingerprint if token else None,
             request_id=request.headers.get(REQUEST_ID_HEADER) or _new_request_id())


def _new_request_id() -> str:
    """16 hex digits; identifies a log line, not a secret (no system call, unlike urandom)."""
    return f"{random.getrandbits(64):016x}"
