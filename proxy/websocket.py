"""WebSocket pass-through: the handshake goes upstream with the token injected, then messages
are relayed both ways until one side closes.

Each side is a real WebSocket endpoint (aiohttp on both), so frames are relayed message by
message: text, binary, ping and pong with their payloads, and the close code and reason. Pings
are not answered here but passed on, so the far end's pong comes back. Compression is not
negotiated on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final, Protocol

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import UpstreamError

log = structlog.get_logger("proxy.websocket")

MAX_MESSAGE: Final = 16 * 1024 * 1024
CLOSE_TIMEOUT: Final = 5.0
HANDSHAKE_HEADERS: Final = frozenset({"sec-websocket-key", "sec-websocket-version",
                                      "sec-websocket-extensions", "sec-websocket-protocol"})
PROTOCOL_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                         1011, 1012, 1013, 1014})


class Socket(Protocol):
    """What the relay uses of aiohttp's client and server WebSocket objects."""

    async def receive(self) -> Any: ...
    async def send_str(self, data: str) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def ping(self, message: bytes = b"") -> None: ...
    async def pong(self, message: bytes = b"") -> None: ...
    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class HandshakeRefused(UpstreamError):
    """The upstream answered the upgrade with something other than 101."""

    code = "websocket_refused"

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream refused the WebSocket handshake with {status}")
        self.status = status if 400 <= status < 600 else 502


async def relay(request: web.Request, session: aiohttp.ClientSession, url: URL,
                headers: CIMultiDict[str]) -> web.WebSocketResponse:
    """Open the upstream WebSocket, accept the client's, and relay until either closes."""
    upstream = await _connect(session, url, headers, offered_protocols(request.headers))
    try:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (), autoping=False,
            autoclose=False, max_msg_size=MAX_MESSAGE, compress=False, timeout=CLOSE_TIMEOUT)
        await client.prepare(request)
        await _pump_both(client, upstream)
    finally:
        await upstream.close(code=WSCloseCode.GOING_AWAY)
    return client


def offered_protocols(headers: CIMultiDictProxy[str]) -> tuple[str, ...]:
    """The subprotocols the client offers, in its order."""
    values = ",".join(headers.getall("Sec-WebSocket-Protocol", ()))
    return tuple(p.strip() for p in values.split(",") if p.strip())


async def _connect(session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str],
                   protocols: tuple[str, ...]) -> aiohttp.ClientWebSocketResponse:
    """The upstream handshake, with the client's headers (minus its own handshake keys)."""
    forwarded = CIMultiDict((k, v) for k, v in headers.items()
                            if k.lower() not in HANDSHAKE_HEADERS)
    try:
        return await session.ws_connect(
            url, headers=forwarded, protocols=protocols, autoclose=False, autoping=False,
            max_msg_size=MAX_MESSAGE, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT))
    except aiohttp.WSServerHandshakeError as exc:
        raise HandshakeRefused(exc.status) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"cannot open a WebSocket to the upstream {url.origin()}: "
                            f"{exc.__class__.__name__}") from None


async def _pump_both(client: Socket, upstream: Socket) -> None:
    """Relay both directions; once one side has closed, give the other a moment to finish."""
    tasks = [asyncio.create_task(_pump(client, upstream), name="ws:client->upstream"),
             asyncio.create_task(_pump(upstream, client), name="ws:upstream->client")]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _pump(source: Socket, target: Socket) -> None:
    """Copy messages from `source` to `target` until `source` closes."""
    try:
        while True:
            msg = await source.receive()
            if msg.type is WSMsgType.CLOSE:
                await _close_both(source, target, msg.data, msg.extra)
                return
            if msg.type is WSMsgType.CLOSING:  # the other pump is closing `source`
                return
            if msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR):
                await target.close(code=WSCloseCode.GOING_AWAY)
                return
            await _send(target, msg)
    except ConnectionError as exc:
        log.info("websocket_peer_gone", error=exc.__class__.__name__)
        await source.close(code=WSCloseCode.GOING_AWAY)


async def _send(target: Socket, msg: aiohttp.WSMessage) -> None:
    """Send one data or control message on."""
    if msg.type is WSMsgType.TEXT:
        await target.send_str(msg.data)
    elif msg.type is WSMsgType.BINARY:
        await target.send_bytes(msg.data)
    elif msg.type is WSMsgType.PING:
        await target.ping(msg.data)
    elif msg.type is WSMsgType.PONG:
        await target.pong(msg.data)


async def _close_both(source: Socket, target: Socket, code: int, reason: str | None) -> None:
    """`source` sent a close frame: pass it on, then answer `source` with the same code."""
    code = sendable_close_code(code)
    await target.close(code=code, message=(reason or "").encode())
    await source.close(code=code)


def sendable_close_code(code: int) -> int:
    """`code` if it may be sent in a close frame (not 1005/1006/1015 etc.), else 1000."""
    return code if code in PROTOCOL_CLOSE_CODES or 3000 <= code < 5000 else WSCloseCode.OK
