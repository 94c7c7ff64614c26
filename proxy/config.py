"""Configuration values: the frozen settings every part of the proxy reads, their defaults,
where each can be set (file key, environment variable, flag), and the small parsers for values
that other modules also parse (listen address, route rules and scopes).

`proxy.config_loader.load` builds a `Config` from the file, the environment and the flags.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from yarl import URL

from proxy.errors import ConfigError
from proxy.scope import Scope, ScopeKind
from proxy.secret import Secret

DEFAULT_LISTEN: Final = "127.0.0.1:8080"
DEFAULT_IDENTITY_PATH: Final = "/api/v2/identity/auth"
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_READ_TIMEOUT: Final = 300.0
DEFAULT_MAX_CONNECTIONS: Final = 100
DEFAULT_REPLAY_LIMIT: Final = 64 * 1024
DEFAULT_MAX_HEADER_SIZE: Final = 64 * 1024
DEFAULT_MFA_WAIT: Final = 60.0
DEFAULT_DRAIN_SECONDS: Final = 10.0
CONFIG_FILE_NAME: Final = "zcompute-proxy.toml"

MfaMode = Literal["auto", "combined", "receipt"]
MFA_MODES: Final = ("auto", "combined", "receipt")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "console", "json")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: Final[tuple[IPNetwork, ...]] = (
    ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))
SECRET_KEYS: Final = frozenset({"auth.password", "auth.totp_secret", "security.access_key"})
ENVIRONMENT: Final[Mapping[str, str]] = {
    "proxy.listen": "ZCOMPUTE_LISTEN",
    "upstream.url": "ZCOMPUTE_URL",
    "upstream.identity_url": "ZCOMPUTE_IDENTITY_URL",
    "upstream.ca_bundle": "ZCOMPUTE_CA_BUNDLE",
    "upstream.insecure": "ZCOMPUTE_INSECURE",
    "auth.username": "ZCOMPUTE_USERNAME",
    "auth.account": "ZCOMPUTE_ACCOUNT",
    "auth.project": "ZCOMPUTE_PROJECT",
    "auth.password": "ZCOMPUTE_PASSWORD",
    "auth.password_file": "ZCOMPUTE_PASSWORD_FILE",
    "auth.totp_secret": "ZCOMPUTE_TOTP_SECRET",
    "auth.totp_secret_file": "ZCOMPUTE_TOTP_SECRET_FILE",
    "auth.mfa": "ZCOMPUTE_MFA",
    "tokens.renew_margin": "ZCOMPUTE_RENEW_MARGIN",
    "tokens.mfa_wait": "ZCOMPUTE_MFA_WAIT",
    "tokens.revoke_on_exit": "ZCOMPUTE_REVOKE_ON_EXIT",
    "log.level": "ZCOMPUTE_LOG_LEVEL",
    "log.format": "ZCOMPUTE_LOG_FORMAT",
    "security.allowed_hosts": "ZCOMPUTE_ALLOWED_HOSTS",
    "security.allowed_origins": "ZCOMPUTE_ALLOWED_ORIGINS",
    "security.allowed_peers": "ZCOMPUTE_ALLOWED_PEERS",
    "security.access_key": "ZCOMPUTE_ACCESS_KEY",
    "security.access_key_file": "ZCOMPUTE_ACCESS_KEY_FILE",
    "security.allow_remote": "ZCOMPUTE_ALLOW_REMOTE",
}

# setting key -> command-line flag (no flag carries a secret)
FLAGS: Final[Mapping[str, str]] = {
    "proxy.listen": "--listen",
    "upstream.url": "--upstream",
    "upstream.identity_url": "--identity-url",
    "upstream.ca_bundle": "--ca-bundle",
    "upstream.insecure": "--insecure",
    "auth.username": "--username",
    "auth.account": "--account",
    "auth.project": "--project",
    "auth.mfa": "--mfa",
    "tokens.renew_margin": "--renew-margin",
    "tokens.mfa_wait": "--mfa-wait",
    "tokens.revoke_on_exit": "--revoke-on-exit",
    "log.level": "--log-level",
    "log.format": "--log-format",
    "security.allowed_hosts": "--allow-host",
    "security.allowed_origins": "--allow-origin",
    "security.allowed_peers": "--allow-peer",
    "security.access_key_file": "--access-key-file",
    "security.allow_remote": "--allow-remote",
}

# settings a file may hold (secrets only as *_file)
FILE_KEYS: Final = frozenset(ENVIRONMENT) - SECRET_KEYS | {
    "upstream.connect_timeout", "upstream.read_timeout", "upstream.max_connections",
    "tokens.replay_limit", "tokens.mfa_wait", "tokens.revoke_on_exit", "proxy.max_header_size",
    "proxy.drain_seconds",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """Where the proxy listens: a TCP host and port, or a unix socket (`unix:/path`)."""

    host: str
    port: int
    unix: Path | None = None

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Only this machine can connect: a unix socket, `localhost` or a loopback address."""
        if self.unix is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """The zCompute endpoint and how to talk to it."""

    url: URL
    identity_url: URL
    ca_bundle: Path | None = None
    insecure: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """Who we log in as. `password` and `totp_secret` are `Secret`s and never print."""

    username: str
    account: str
    password: Secret
    totp_secret: Secret | None = None
    mfa: MfaMode = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    """`[METHOD] PATTERN = SCOPE` as configured; `routes` compiles it."""

    pattern: str
    scope: str
    method: str | None = None
    source: str = "default"

    def __str__(self) -> str:
        method = f"{self.method} " if self.method else ""
        return f"{method}{self.pattern}={self.scope}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenConfig:
    """Token renewal settings; `renew_margin=None` means automatic (see tokens.RenewalPolicy)."""

    renew_margin: float | None = None
    replay_limit: int = DEFAULT_REPLAY_LIMIT
    mfa_wait: float = DEFAULT_MFA_WAIT
    revoke_on_exit: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Log level and format."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """Who may use the proxy (enforced by `proxy.guard`; see SECURITY.md).

    `allowed_hosts` and `allowed_origins` extend the built-in lists, lower-cased;
    `allowed_peers` is None when any address may connect (non-loopback listen allowed).
    """

    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    allowed_peers: tuple[IPNetwork, ...] | None = LOOPBACK_NETWORKS
    access_key: Secret | None = None
    allow_remote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the proxy needs, validated."""

    listen: ListenAddress
    upstream: UpstreamConfig
    auth: AuthConfig | None
    routes: tuple[RouteRule, ...]
    default_project: str | None = None
    tokens: TokenConfig = field(default_factory=TokenConfig)
    log: LogConfig = field(default_factory=LogConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    config_file: Path | None = None
    warnings: tuple[str, ...] = ()


def parse_route_flag(text: str) -> RouteRule:
    """`[METHOD ]PATTERN=SCOPE`, as given to `--route`."""
    where = f"--route {text!r}"
    spec, sep, scope = text.rpartition("=")
    if not sep:
        raise ConfigError(f"{where} needs the form [METHOD ]PATTERN=SCOPE, "
                          "e.g. --route '/api/v2/foo/**=account'")
    method, _, pattern = spec.strip().rpartition(" ")
    return make_rule(pattern, scope.strip(), method.strip() or None, where)


def make_rule(pattern: str, scope: str, method: str | None, where: str) -> RouteRule:
    """Validate one rule's parts."""
    if not pattern.startswith("/"):
        raise ConfigError(f"{where}: the path pattern must start with '/', got {pattern!r}")
    parse_scope_spec(scope, where)
    if method is not None and not (method.isalpha() and method.isupper()):
        raise ConfigError(f"{where}: method must be an upper-case HTTP method like GET")
    return RouteRule(pattern=pattern, scope=scope, method=method, source=where)


def parse_scope_spec(spec: str, where: str) -> ScopeKind | Scope:
    """`account`, `project`, `project:NAME` or `none` → a kind (default project) or a Scope."""
    if spec in ("account", "project", "none"):
        return ScopeKind(spec)
    if spec.startswith("project:") and len(spec) > len("project:"):
        return Scope(ScopeKind.PROJECT, spec.removeprefix("project:"))
    raise ConfigError(f"{where}: scope must be account, project, project:NAME or none, "
                      f"got {spec!r}")


def parse_listen(text: str, source: str) -> ListenAddress:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` (loopback) or `unix:/path/to/socket`."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith(("/", "~", ".")):
            raise ConfigError(f"{source} must be unix:/path/to/socket, got {text!r}")
        return ListenAddress(host="", port=0, unix=expand_user(Path(path), source))
    if "://" in text:
        raise ConfigError(f"{source} takes HOST:PORT like 127.0.0.1:8080, not a URL; "
                          f"got {text!r}")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{source} must be HOST:PORT like 127.0.0.1:8080, got {text!r}")
    return ListenAddress(host=host, port=int(port_text))




def expand_user(path: Path, source: str) -> Path:
    """`path` with a leading `~` or `~user` expanded; a ConfigError if that user is unknown."""
    try:
        return path.expanduser()
    except RuntimeError:
        raise ConfigError(f"{source}: cannot expand {str(path)!r}: no such user's home; "
                          "give an absolute path") from None
