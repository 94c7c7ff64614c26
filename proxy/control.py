"""Talk to a running proxy's admin endpoints from the command line (`login`, `reload`,
`totp CODE`), over TCP or its unix socket, with the access key when one is configured."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from proxy.config import Config

TIMEOUT: Final = 90.0


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix domain socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def _connection(config: Config, proxy_url: str | None) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the proxy, and a name for messages."""
    if proxy_url is None and config.listen.unix is not None:
        return _UnixConnection(config.listen.unix, TIMEOUT), str(config.listen)
    url = urlsplit(proxy_url or f"http://{config.listen}")
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80,
                                      timeout=TIMEOUT), url.geturl()


def post_to_proxy(config: Config, action: str, body: dict[str, Any],
                  proxy_url: str | None = None, out: TextIO = sys.stdout) -> int:
    """POST `body` as JSON to `/_proxy/ACTION`; print the answer; 0 on success, 1 otherwise."""
    connection, where = _connection(config, proxy_url)
    headers = {"Content-Type": "application/json"}
    if config.security.access_key is not None:
        headers["Proxy-Authorization"] = f"Bearer {config.security.access_key.reveal()}"
    try:
        connection.request("POST", f"/_proxy/{action}", json.dumps(body).encode(), headers)
        response = connection.getresponse()
        answer, ok = response.read(), response.status < 400
    except OSError as exc:
        print(f"Error: cannot reach the proxy at {where}: {exc.__class__.__name__}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        connection.close()
    out.write(_summary(answer) + "\n")
    return 0 if ok else 1


def _summary(answer: bytes) -> str:
    try:
        data = json.loads(answer)
    except ValueError:
        return answer.decode("utf-8", "replace")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        hint = f"\nHint: {error['hint']}" if error.get("hint") else ""
        return f"Error: {error.get('message')}{hint}"
    return json.dumps(data)
