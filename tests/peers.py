"""Raw HTTP/1.1 exchanges from a chosen source address or over a unix socket, and what a
process really listens on (read from /proc), for the security tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class Reply:
    """One response: status, header lines in order, body."""

    status: int
    header_lines: list[tuple[str, str]]
    body: bytes

    def headers(self, name: str) -> list[str]:
        """All values of header `name` (case-insensitive)."""
        return [v for k, v in self.header_lines if k.lower() == name.lower()]

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        """Our error code (`error.code`), if the body is one of our errors."""
        try:
            return str(self.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


def request(method: str, target: str, host: str | None,
            headers: Sequence[tuple[str, str]] = (), *, body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:
    """The exact bytes of one request (Host first when given, Content-Length when a body)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(port: int, data: bytes, *, host: str = "127.0.0.1",
                   source: str | None = None, unix: Path | None = None,
                   limit_s: float = 60.0) -> Reply:
    """Send `data` on a new connection (from `source`, or over `unix`); read one response."""
    if unix is not None:
        reader, writer = await asyncio.open_unix_connection(str(unix))
    else:
        local = (source, 0) if source is not None else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limit_s)
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        pairs = [line.split(":", 1) for line in lines]
        header_lines = [(name, value.strip()) for name, value in pairs]
        length = next((int(v) for k, v in header_lines if k.lower() == "content-length"), 0)
        body = await asyncio.wait_for(reader.readexactly(length), limit_s) if length else b""
        return Reply(int(status_line.split(" ")[1]), header_lines, body)
    finally:
        writer.close()


def non_loopback_ipv4() -> str | None:
    """The first IPv4 address of this machine outside 127.0.0.0/8 (`ip -4 addr`), if any."""
    ip = shutil.which("ip")
    if ip is None:
        return None
    out = subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=False, timeout=10).stdout
    for address in re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out):
        if not ipaddress.IPv4Address(address).is_loopback:
            return address
    return None


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for fields in (line.split() for line in lines):
            if fields[3] == LISTEN_STATE and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.add((_proc_address(address), int(port, 16)))
    return found


def _proc_address(text: str) -> str:
    """A /proc/net address: little-endian 32-bit words in hex."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))
