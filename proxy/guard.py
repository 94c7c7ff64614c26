"""Who may use the proxy: one aiohttp middleware that answers before any handler runs.

Whoever can talk to the proxy acts with the user's zCompute identity, so every request, the
admin endpoints under `/_proxy/` included, passes these checks first, in this order:

1. peer address: loopback by default; any address once a non-loopback listen address was
   allowed (access key or `--allow-remote`); exactly `security.allowed_peers` when set.
   Unix-socket clients pass (the socket file is 0600);
2. request target: origin-form only. CONNECT, absolute-form (`GET http://host/ HTTP/1.1`) and
   `*` are refused, so the proxy never reaches anything but its configured upstream; so is a
   `#` (invalid in a target; the upstream would receive a shorter path than was routed);
3. Host: an anchored allow-list, `localhost`, `127.0.0.1` and `[::1]` (any port, or none)
   plus `security.allowed_hosts`. A DNS-rebinding page sends its own name and is refused
   before any login or upstream call;
4. access key, when configured: `Proxy-Authorization: Bearer KEY`, compared in constant time
   (`GET /_proxy/health` alone is exempt, for container health checks);
5. browsers: an `Origin` that is neither allow-listed nor the proxy's own, or, without an
   Origin, `Sec-Fetch-Site: cross-site|same-site`, is refused (preflights included). The proxy
   never sends CORS allow headers of its own and drops the upstream's unless the request's
   Origin is allow-listed.

A request that passes loses the headers a client could use to lie about itself (`Forwarded`,
`X-Forwarded-*`, `X-Real-IP`, ...) and `Proxy-Authorization` before any handler sees it; the
peer address is bound to the log context so the access log shows who really connected.
Everything is computed once in `Guard.from_config`; a request costs a few set lookups.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Config, IPNetwork
from proxy.errors import ConfigError, ProxyError
from proxy.log import REDACTOR

log = structlog.get_logger("proxy.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _own_loopback_host(config: Config) -> frozenset[str]:
    """The listen address itself when it is another loopback address (`--listen 127.0.0.2`)."""
    listen = config.listen
    if listen.unix is not None or not listen.loopback:
        return frozenset()
    return frozenset({f"[{listen.host}]" if ":" in listen.host else listen.host.lower()})
HEALTH_PATH: Final = "/_proxy/health"
CROSS_SITE: Final = frozenset({"cross-site", "same-site"})
# Headers by which a client could claim another address, host or scheme; never forwarded.
SPOOFABLE: Final = (
    "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
    "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Forwarded-Ssl",
    "X-Real-IP", "X-Client-IP", "True-Client-IP", "X-Original-Forwarded-For",
)
STRIPPED: Final = ("Proxy-Authorization", *SPOOFABLE)
_STRIPPED_LOWER: Final = frozenset(name.lower() for name in STRIPPED)
CORS_RESPONSE_HEADERS: Final = (
    "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
    "Access-Control-Allow-Private-Network", "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
)
MAX_SHOWN: Final = 80
PEER_CACHE_SIZE: Final = 4096
ACCESS_KEY_BYTES: Final = 32


class Refused(ProxyError):
    """The guard refused a request; `code` names the check, `status` is 400, 403, 405 or 407."""

    def __init__(self, status: int, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Guard:
    """The allow-lists of one running proxy, precomputed; `middleware` applies them."""

    hosts_any_port: frozenset[str]
    hosts_exact: frozenset[str]
    origins: frozenset[str]
    peers: tuple[IPNetwork, ...] | None  # None: any peer address
    access_key: bytes | None
    peer_cache: dict[str, bool]

    @classmethod
    def from_config(cls, config: Config) -> Guard:
        """Everything the per-request checks need, computed once."""
        security = config.security
        exact = frozenset(h for h in security.allowed_hosts if _has_port(h))
        key = security.access_key
        if key is not None:
            REDACTOR.add(key.reveal())
        own = _own_loopback_host(config)
        return cls(
            hosts_any_port=LOOPBACK_HOSTS | own | (frozenset(security.allowed_hosts) - exact),
            hosts_exact=exact,
            origins=frozenset(security.allowed_origins),
            peers=security.allowed_peers,
            access_key=key.reveal().encode() if key is not None else None,
            peer_cache={},
        )

    def install(self, app: web.Application) -> None:
        """Run first among `app`'s middlewares, and keep CORS allow headers off responses."""
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self.middleware(request, handler)

        app.middlewares.insert(0, guard)
        app.on_response_prepare.append(self.strip_cors)

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse the request, or hand it on without the headers a client may not set."""
        peer = peer_text(request)
        bound = structlog.contextvars.bind_contextvars(peer=peer)
        try:
            self.check(request, peer)
        except Refused as exc:
            return refusal(request, exc)
        else:
            return await handler(_without_stripped(request))
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    def check(self, request: web.Request, peer: str) -> None:
        """Raise `Refused` for the first check the request fails."""
        self.check_peer(peer)
        check_target(request.method, request.raw_path)
        host = self.check_host(request.headers.getone("Host", None))
        if self.access_key is not None and not _health(request):
            check_key(self.access_key, request.headers.getall("Proxy-Authorization", []))
        self.check_browser(request.headers, host)

    def check_peer(self, peer: str) -> None:
        """Only allowed addresses (or a unix-socket client) get further."""
        if self.peers is None or peer == "unix":
            return
        allowed = self.peer_cache.get(peer)
        if allowed is None:
            allowed = peer_allowed(peer, self.peers)
            if len(self.peer_cache) >= PEER_CACHE_SIZE:
                self.peer_cache.clear()
            self.peer_cache[peer] = allowed
        if not allowed:
            raise Refused(403, "peer_not_allowed",
                          f"connections from {peer} are not allowed",
                          hint="add its network to security.allowed_peers (--allow-peer CIDR)")

    def check_host(self, host: str | None) -> str:
        """The Host header, lower-cased, if its name is allow-listed; else `Refused`."""
        if host is None:
            raise Refused(403, "host_not_allowed", "a Host header is required")
        host = host.lower()
        if host in self.hosts_exact or host_name(host) in self.hosts_any_port:
            return host
        raise Refused(403, "host_not_allowed", f"Host {shown(host)} is not allowed",
                      hint="use http://localhost:PORT or http://127.0.0.1:PORT, or add the "
                           "name to security.allowed_hosts (--allow-host NAME)")

    def check_browser(self, headers: CIMultiDictProxy[str], host: str) -> None:
        """Refuse cross-site browser requests: a foreign Origin, or a cross-site fetch."""
        origin = headers.get("Origin")
        if origin is not None:
            origin = origin.lower()
            if origin in self.origins or origin == f"http://{host}":
                return
            raise Refused(403, "origin_not_allowed",
                          f"requests from the web page origin {shown(origin)} are not allowed",
                          hint="add the origin to security.allowed_origins (--allow-origin)")
        if headers.get("Sec-Fetch-Site") in CROSS_SITE:
            raise Refused(403, "origin_not_allowed",
                          "cross-site requests from web pages are not allowed")

    async def strip_cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """Drop CORS allow headers unless the request's Origin is allow-listed."""
        if response.headers.keys().isdisjoint(CORS_RESPONSE_HEADERS):
            return  # the usual case: one case-insensitive set operation
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() in self.origins:
            return
        for name in CORS_RESPONSE_HEADERS:
            response.headers.popall(name, None)


def peer_text(request: web.Request) -> str:
    """The connecting address as text, `unix` for a unix-socket client, `unknown` if gone."""
    transport = request.transport
    if transport is None:
        return "unknown"
    peer: Any = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    sock: Any = transport.get_extra_info("socket")
    return "unix" if sock is not None and sock.family == socket.AF_UNIX else "unknown"


def peer_allowed(peer: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether the address `peer` lies in one of `networks` (IPv4-mapped IPv6 as IPv4)."""
    try:
        address = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def check_key(key: bytes, values: list[str]) -> None:
    """Exactly one `Proxy-Authorization: Bearer KEY` carrying `key` (constant-time compare)."""
    scheme, _, given = values[0].strip().partition(" ") if len(values) == 1 else ("", "", "")
    if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), key):
        return
    raise Refused(407, "access_key_required",
                  "this proxy needs its access key" if not values else "the access key is wrong",
                  hint="send the header Proxy-Authorization: Bearer KEY, KEY being the content "
                       "of security.access_key_file (ZCOMPUTE_ACCESS_KEY_FILE)")


def check_target(method: str, raw_target: str) -> None:
    """Only origin-form targets (`/path?query`); never CONNECT, absolute-form or `*`."""
    if method == "CONNECT":
        raise Refused(405, "method_not_allowed",
                      "CONNECT is refused: this is not a forward proxy; it only talks to its "
                      "configured upstream")
    if not raw_target.startswith("/"):
        raise Refused(400, "bad_request",
                      "only origin-form request targets (/path) are accepted; this proxy "
                      "always talks to its configured upstream")
    if "#" in raw_target:
        raise Refused(400, "bad_request",
                      "a request target cannot contain '#' (a fragment stays in the client); "
                      "percent-encode it as %23 if it is part of the path or query")


def host_name(host: str) -> str:
    """`name` of `name:port`, `[v6]` of `[v6]:port`; the whole text when there is no port."""
    if host.endswith("]"):
        return host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and not name.endswith(":") else host


def _has_port(host: str) -> bool:
    return host_name(host) != host


def _health(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD") and request.raw_path == HEALTH_PATH


def shown(text: str) -> str:
    """A client-supplied value, shortened and quoted, safe to put in a message."""
    return repr(text[:MAX_SHOWN] + ("..." if len(text) > MAX_SHOWN else ""))


def _without_stripped(request: web.Request) -> web.Request:
    """`request`, or a clone of it without Proxy-Authorization and the spoofable headers."""
    headers = request.headers
    if headers.keys().isdisjoint(STRIPPED):  # case-insensitive
        return request
    kept = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _STRIPPED_LOWER)
    return request.clone(headers=kept)


def refusal(request: web.Request, exc: Refused) -> web.Response:
    """Our JSON error for a refused request (never a CORS header), logged once."""
    log.warning("request_refused", code=exc.code, status=exc.status,
                method=request.method, host=shown(request.headers.get("Host") or ""),
                reason=exc.message)
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if exc.status == 407:
        headers["Proxy-Authenticate"] = 'Bearer realm="zcompute-proxy"'
    return web.json_response(exc.to_json(), status=exc.status, headers=headers)


def write_access_key(path: Path) -> None:
    """Write a new random access key (256 bits, url-safe) to a new file `path`, mode 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"--generate-access-key: {path} exists; remove it or choose another "
                          "path (an existing key is never overwritten)") from None
    except OSError as exc:
        raise ConfigError(f"--generate-access-key: cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(secrets.token_urlsafe(ACCESS_KEY_BYTES) + "\n")
