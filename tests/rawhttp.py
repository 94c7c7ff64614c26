"""Raw-socket HTTP/1.1 peers for byte-exact tests: an upstream that records what arrives on
its socket and answers with scripted bytes, and a client that sends exact bytes.

Normal client libraries normalise URLs and headers; these do not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    """One request as it arrived: the request line, header lines in order, and the body."""

    head: bytes
    body: bytes

    @property
    def request_line(self) -> str:
        """e.g. `GET /v1/x HTTP/1.1`."""
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def target(self) -> str:
        """The request-target exactly as sent."""
        return self.request_line.split(" ")[1]

    @property
    def header_lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs in arrival order, duplicates kept."""
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        pairs = [line.split(":", 1) for line in lines if line]
        return [(name, value.strip()) for name, value in pairs]

    def headers(self, name: str) -> list[str]:
        """All values of header `name` (case-insensitive)."""
        return [v for k, v in self.header_lines if k.lower() == name.lower()]


Responder = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """Read one request (Content-Length or chunked body); None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    request = RawRequest(head=head[:-4], body=b"")
    if "chunked" in ",".join(request.headers("Transfer-Encoding")).lower():
        request.body = await _read_chunked(reader)
    elif request.headers("Content-Length"):
        request.body = await reader.readexactly(int(request.headers("Content-Length")[0]))
    return request


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


@dataclass
class RawUpstream:
    """A scripted HTTP/1.1 server on 127.0.0.1 recording every request."""

    respond: Responder
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> RawUpstream:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (request := await read_request(reader)) is not None:
                self.requests.append(request)
                await self.respond(request, writer)
                if writer.is_closing():
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def json_reply(body: bytes = b"{}", status: str = "200 OK",
               extra: tuple[str, ...] = ()) -> Responder:
    """A responder answering every request with the same small body."""
    head = "\r\n".join((f"HTTP/1.1 {status}", f"Content-Length: {len(body)}",
                        "Content-Type: application/json", *extra)) + "\r\n\r\n"

    async def respond(_request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()

    return respond


async def raw_exchange(port: int, data: bytes, *, read_until_close: bool = False,
                       limit_s: float = 5.0) -> bytes:
    """Send exact bytes to 127.0.0.1:port and return what comes back (one response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read_until_close:
            return await asyncio.wait_for(reader.read(), limit_s)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limit_s)
        length = _content_length(head)
        body = await asyncio.wait_for(reader.readexactly(length), limit_s) if length else b""
        return head + body
    finally:
        writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
