"""Raw-socket HTTP/1.1 peers for byte-exact tests: an upstream that records what arrives on
its socket and answers with scripted bytes, and a client that sends exact bytes.

Normal client libraries normalise URLs and headers; these do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RawMessage:
    """A message head as it arrived: the start line and the header lines in order."""

    head: bytes
    body: bytes = b""

    @property
    def start_line(self) -> str:
        """e.g. `GET /v1/x HTTP/1.1` or `HTTP/1.1 200 OK`."""
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def header_lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs in arrival order, duplicates kept, names as sent."""
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        pairs = [line.split(":", 1) for line in lines if line]
        return [(name, value.strip()) for name, value in pairs]

    def headers(self, name: str) -> list[str]:
        """All values of header `name` (case-insensitive)."""
        return [v for k, v in self.header_lines if k.lower() == name.lower()]


@dataclass
class RawRequest(RawMessage):
    """One request as it arrived: the request line, header lines in order, and the body."""

    @property
    def request_line(self) -> str:
        """e.g. `GET /v1/x HTTP/1.1`."""
        return self.start_line

    @property
    def target(self) -> str:
        """The request-target exactly as sent."""
        return self.request_line.split(" ")[1]


@dataclass
class RawResponse(RawMessage):
    """One response as read off the socket: `complete` is False if the framing was cut short."""

    chunks: list[bytes] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    complete: bool = True

    @property
    def status(self) -> int:
        """The status code."""
        return int(self.start_line.split(" ")[1])

    @property
    def framing(self) -> list[str]:
        """The framing header lines present (Content-Length and Transfer-Encoding)."""
        return [f"{k}: {v}" for k, v in self.header_lines
                if k.lower() in ("content-length", "transfer-encoding")]


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
    open_connections: int = 0
    closed_at: list[float] = field(default_factory=list)
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
        self.open_connections += 1
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
            self.open_connections -= 1
            self.closed_at.append(asyncio.get_running_loop().time())


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


def response_bytes(status: str, headers: tuple[str, ...] = (), body: bytes = b"") -> bytes:
    """`HTTP/1.1 STATUS`, the header lines exactly as given, a blank line and `body`."""
    return "\r\n".join((f"HTTP/1.1 {status}", *headers)).encode("latin-1") + b"\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (`b""` gives the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> RawResponse:
    """Read one response as its framing says; a body cut short gives `complete=False`."""
    head = await reader.readuntil(b"\r\n\r\n")
    response = RawResponse(head=head[:-4])
    if method == "HEAD" or response.status in (204, 304) or response.status < 200:
        return response
    try:
        if "chunked" in ",".join(response.headers("Transfer-Encoding")).lower():
            await _read_response_chunks(reader, response)
        elif response.headers("Content-Length"):
            length = int(response.headers("Content-Length")[0])
            response.body = await reader.readexactly(length)
        else:
            response.body = await reader.read()
    except asyncio.IncompleteReadError as exc:
        response.body += exc.partial
        response.complete = False
    except ConnectionError:
        response.complete = False
    return response


async def _read_response_chunks(reader: asyncio.StreamReader, response: RawResponse) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return
        response.chunks.append(data[:-2])
        response.chunk_times.append(loop.time())
        response.body += data[:-2]


@dataclass
class RawClient:
    """One client connection to 127.0.0.1:port that sends exact bytes and reads responses."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        """Open the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write `data` and wait until it is handed to the kernel."""
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, method: str = "GET", limit_s: float = 5.0) -> RawResponse:
        """The next response on this connection."""
        return await asyncio.wait_for(read_response(self.reader, method), limit_s)

    async def closed_by_peer(self, limit_s: float = 5.0) -> bool:
        """True once the other side closed (EOF or reset) within `limit_s`."""
        try:
            return await asyncio.wait_for(self.reader.read(), limit_s) == b""
        except ConnectionError:
            return True

    def reset(self) -> None:
        """Close abruptly with a TCP RST (SO_LINGER 0), like a killed client."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        """Close politely."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
