"""bug-cases.md row 31: WebSocket upgrades pass through with the token on the handshake; text,
binary, ping/pong and close codes are relayed both ways."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.bugcase_support import proxy_to, until
from tests.conftest import ProxyFactory, SimulatorFactory, base_url


@dataclass
class EchoRecorder:
    """U: accepts `v1`, records the handshake and every message, and runs a scripted exchange."""

    script: str = "server_closes"
    handshake: dict[str, str] = field(default_factory=dict)
    received: list[tuple[WSMsgType, Any, Any]] = field(default_factory=list)
    pong_after: float | None = None
    close_code: int | None = None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The upstream WebSocket endpoint."""
        self.handshake = dict(request.headers)
        ws = web.WebSocketResponse(protocols=("v1",), autoping=False)
        await ws.prepare(request)
        if self.script == "server_closes":
            await self._server_closes(ws)
        else:
            await self._record_until_close(ws)
        return ws

    async def _server_closes(self, ws: web.WebSocketResponse) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await ws.ping(b"hello")
        pong = await ws.receive(timeout=1)
        if pong.type is WSMsgType.PONG and pong.data == b"hello":
            self.pong_after = loop.time() - started
        await ws.send_str("t1")
        await ws.send_bytes(b"\x00\xff")
        for _ in range(2):
            msg = await ws.receive(timeout=2)
            self.received.append((msg.type, msg.data, msg.extra))
        await ws.close(code=4001, message=b"bye")

    async def _record_until_close(self, ws: web.WebSocketResponse) -> None:
        while True:
            msg = await ws.receive(timeout=5)
            self.received.append((msg.type, msg.data, msg.extra))
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            if msg.type is WSMsgType.CLOSE:
                self.close_code = msg.data
                await ws.close(code=msg.data)
                return


async def _proxy_for(recorder: EchoRecorder, aiohttp_server: Any,
                     start_simulator: SimulatorFactory, start_proxy: ProxyFactory) -> str:
    app = web.Application()
    app.router.add_get("/v1/ws", recorder.handle)
    upstream = await aiohttp_server(app)
    proxy = await proxy_to(start_simulator, start_proxy, base_url(upstream))
    return f"{base_url(proxy)}/v1/ws"


async def test_row31_websocket_relays_messages_ping_and_close_code(
        aiohttp_server: Any, start_simulator: SimulatorFactory,
        start_proxy: ProxyFactory) -> None:
    """The handshake carries the token and the subprotocol; ping(b'hello') comes back as a pong
    within 1 s; 't1' and 00 ff arrive byte-exact, the client's text and bytes reach U, and the
    client sees U's close code 4001 with reason 'bye'."""
    recorder = EchoRecorder()
    url = await _proxy_for(recorder, aiohttp_server, start_simulator, start_proxy)
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(url, protocols=("v1",)) as ws:
        assert ws.protocol == "v1"
        text, binary = await ws.receive(timeout=2), await ws.receive(timeout=2)
        await ws.send_str("up ✓")
        await ws.send_bytes(b"\x01\x02")
        closing = await ws.receive(timeout=2)
    assert recorder.handshake["X-Auth-Token"].startswith("gAAAA")
    assert recorder.handshake["Sec-WebSocket-Protocol"] == "v1"
    assert recorder.pong_after is not None
    assert recorder.pong_after < 1
    assert (text.type, text.data) == (WSMsgType.TEXT, "t1")
    assert (binary.type, binary.data) == (WSMsgType.BINARY, b"\x00\xff")
    assert [m[:2] for m in recorder.received] == [(WSMsgType.TEXT, "up ✓"),
                                                  (WSMsgType.BINARY, b"\x01\x02")]
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4001, "bye")


async def test_row31_client_ping_and_close_code_reach_the_upstream(
        aiohttp_server: Any, start_simulator: SimulatorFactory,
        start_proxy: ProxyFactory) -> None:
    """The client's ping payload reaches U (whose pong comes back) and the client's close
    code 4002 and reason reach U; the client gets the close answered."""
    recorder = EchoRecorder(script="record")
    url = await _proxy_for(recorder, aiohttp_server, start_simulator, start_proxy)
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(url, protocols=("v1",), autoping=False) as ws:
        await ws.ping(b"are you there")
        pong = await ws.receive(timeout=2)
        await ws.close(code=4002, message=b"done")
    assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
    assert recorder.received[0][:2] == (WSMsgType.PING, b"are you there")
    assert recorder.received[-1] == (WSMsgType.CLOSE, 4002, "done")
    assert ws.close_code == 4002


async def test_row31_refused_handshake_gives_the_upstream_status(
        aiohttp_server: Any, start_simulator: SimulatorFactory,
        start_proxy: ProxyFactory) -> None:
    """An upstream that answers the upgrade with 403 gives the client a 403 JSON error."""

    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app = web.Application()
    app.router.add_get("/v1/ws", refuse)
    upstream = await aiohttp_server(app)
    proxy = await proxy_to(start_simulator, start_proxy, base_url(upstream))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{base_url(proxy)}/v1/ws")
    assert refused.value.status == 403


async def test_row31_client_that_vanishes_closes_the_upstream_socket(
        aiohttp_server: Any, start_simulator: SimulatorFactory, start_proxy: ProxyFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    """A client that drops its TCP connection mid-session gets the upstream WebSocket closed
    with 1001 (going away) within 2 s, and nothing reports an unclosed resource."""
    recorder = EchoRecorder(script="record")
    url = await _proxy_for(recorder, aiohttp_server, start_simulator, start_proxy)
    with caplog.at_level(logging.DEBUG):
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url)
            await ws.send_str("hi")
            await until(lambda: len(recorder.received) == 1, 2)
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
            await until(lambda: recorder.close_code is not None, 2)
            await ws.close()
    assert recorder.close_code == 1001
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage() or r.exc_info]

