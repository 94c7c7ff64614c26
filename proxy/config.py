"""Configuration: one TOML file, environment variables and flags, validated once at start-up.

Precedence is flags over environment over file over defaults. Every error names the setting in
the form the user wrote it (`--upstream`, `ZCOMPUTE_URL`, or `upstream.url in FILE`) and says
how to fix it. Passwords and TOTP secrets come only from the environment or from files, never
from flags (which other local users can read in the process list).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pyotp
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
MIN_ACCESS_KEY_LENGTH: Final = 16
SECRET_KEYS: Final = frozenset({"auth.password", "auth.totp_secret", "security.access_key"})
_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 9110 token68: fits a header
_HOST_NAME: Final = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                               r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?|\[[0-9a-f:.]+\]")

# setting key -> environment variable
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


@dataclass(frozen=True, slots=True)
class Setting:
    """One raw value and where it came from, for error messages."""

    value: Any
    source: str


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


def load(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    routes: Sequence[str] = (),
    need_auth: bool = True,
) -> Config:
    """Read file, environment and flags; raise `ConfigError` naming the key and the fix."""
    environ = os.environ if environ is None else environ
    path = find_config_file(config_file, environ)
    settings, file_routes = read_file(path) if path else ({}, [])
    settings |= _from_environment(environ)
    settings |= {key: Setting(v, FLAGS[key]) for key, v in (flags or {}).items() if v is not None}
    builder = _Builder(settings)
    if path is not None:
        builder.check_permissions(path, "config file")
    rules = tuple(file_routes) + tuple(parse_route_flag(r) for r in routes)
    listen = builder.listen()
    return Config(
        listen=listen,
        upstream=builder.upstream(),
        auth=builder.auth() if need_auth else builder.auth_if_complete(),
        routes=rules,
        default_project=builder.text("auth.project"),
        tokens=builder.tokens(),
        log=LogConfig(level=builder.choice("log.level", LOG_LEVELS, "info"),
                      format=builder.choice("log.format", LOG_FORMATS, "auto")),
        max_header_size=builder.integer("proxy.max_header_size", DEFAULT_MAX_HEADER_SIZE, 8192),
        drain_seconds=builder.number("proxy.drain_seconds", DEFAULT_DRAIN_SECONDS, 0),
        security=builder.security(listen),
        config_file=path,
        warnings=tuple(builder.warnings),
    )


def find_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """`--config`, then `ZCOMPUTE_CONFIG`, `./zcompute-proxy.toml`, `~/.config/zcompute-proxy/`."""
    if explicit is None and environ.get("ZCOMPUTE_CONFIG"):
        explicit = Path(environ["ZCOMPUTE_CONFIG"])
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist; fix the --config path")
        return explicit
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    for candidate in (Path(CONFIG_FILE_NAME), Path(xdg) / "zcompute-proxy" / "config.toml"):
        if candidate.expanduser().is_file():
            return candidate.expanduser()
    return None


def read_file(path: Path) -> tuple[dict[str, Setting], list[RouteRule]]:
    """Flatten a TOML file into `section.key` settings plus its `[[routes]]` rules."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    settings: dict[str, Setting] = {}
    rules: list[RouteRule] = []
    for section, table in data.items():
        if section == "routes":
            rules = [_file_route(entry, path, i) for i, entry in enumerate(_as_list(table, path))]
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{section} in {path} must be a [{section}] table")
        for key, value in table.items():
            settings[f"{section}.{key}"] = Setting(value, f"{section}.{key} in {path}")
    for key in settings:
        if key not in FILE_KEYS:
            raise ConfigError(_unknown_key_message(key, path))
    return settings, rules


def _unknown_key_message(key: str, path: Path) -> str:
    if key in SECRET_KEYS:
        return (f"{key} in {path}: secrets are not read from the config file; use "
                f"{key}_file or the {ENVIRONMENT[key]} environment variable")
    return f"unknown setting {key} in {path}; see config/zcompute-proxy.example.toml"


def _as_list(table: Any, path: Path) -> list[Any]:
    if not isinstance(table, list):
        raise ConfigError(f"routes in {path} must be an array of tables: [[routes]]")
    return table


def _file_route(entry: Any, path: Path, index: int) -> RouteRule:
    where = f"routes[{index}] in {path}"
    if not isinstance(entry, dict) or set(entry) - {"path", "scope", "method"}:
        raise ConfigError(f"{where} takes exactly the keys path, scope and optional method")
    if not isinstance(entry.get("path"), str) or not isinstance(entry.get("scope"), str):
        raise ConfigError(f"{where} needs path = \"/api/...\" and scope = \"account\" (strings)")
    return make_rule(entry["path"], entry["scope"], entry.get("method"), where)


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


def _from_environment(environ: Mapping[str, str]) -> dict[str, Setting]:
    return {key: Setting(environ[var], var) for key, var in ENVIRONMENT.items()
            if environ.get(var, "") != ""}


class _Builder:
    """Turns raw settings into typed values, with one precise error per bad value."""

    def __init__(self, settings: Mapping[str, Setting]) -> None:
        self.settings = settings
        self.warnings: list[str] = []

    def text(self, key: str) -> str | None:
        setting = self.settings.get(key)
        if setting is None:
            return None
        if not isinstance(setting.value, str) or not setting.value.strip():
            raise ConfigError(f"{setting.source} must be a non-empty string")
        return setting.value.strip()

    def required(self, key: str, example: str) -> str:
        value = self.text(key)
        if value is None:
            raise ConfigError(f"{key} is not set; set {ENVIRONMENT.get(key, key)}={example} "
                              f"(or {key} in the config file)")
        return value

    def number(self, key: str, default: float, minimum: float) -> float:
        setting = self.settings.get(key)
        if setting is None:
            return default
        try:
            value = float(setting.value)
        except (TypeError, ValueError):
            raise ConfigError(f"{setting.source} must be a number of seconds, "
                              f"got {setting.value!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{setting.source} must be a finite number, got {setting.value!r}")
        if value < minimum:
            raise ConfigError(f"{setting.source} must be at least {minimum:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.number(key, default, minimum)
        if value != int(value):
            raise ConfigError(f"{self.settings[key].source} must be a whole number")
        return int(value)

    def flag(self, key: str) -> bool:
        setting = self.settings.get(key)
        if setting is None or isinstance(setting.value, bool):
            return bool(setting and setting.value)
        text = str(setting.value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{setting.source} must be true or false, got {setting.value!r}")

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.text(key)
        if value is None:
            return default
        if value.lower() not in choices:
            raise ConfigError(f"{self.settings[key].source} must be one of "
                              f"{', '.join(choices)}; got {value!r}")
        return value.lower()

    def url(self, key: str, value: str) -> URL:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            source = self.settings[key].source
            raise ConfigError(f"{source} must be an http(s) URL like https://zcompute.example.com"
                              f", got {value!r}")
        if url.query_string or url.fragment:
            raise ConfigError(f"{self.settings[key].source} must not have a query or fragment")
        return url

    def listen(self) -> ListenAddress:
        return parse_listen(self.text("proxy.listen") or DEFAULT_LISTEN,
                            self.settings.get("proxy.listen", Setting("", "--listen")).source)

    def upstream(self) -> UpstreamConfig:
        base = self.url("upstream.url", self.required("upstream.url", "https://zcompute.example.com"))
        identity = self.text("upstream.identity_url")
        insecure = self.flag("upstream.insecure")
        if insecure:
            self.warnings.append("TLS certificate verification of the upstream is OFF "
                                 "(upstream.insecure); use upstream.ca_bundle instead")
        return UpstreamConfig(
            url=base.with_path(base.path.rstrip("/") or "/"),
            identity_url=self.url("upstream.identity_url", identity) if identity
            else base.with_path(base.path.rstrip("/") + DEFAULT_IDENTITY_PATH),
            ca_bundle=self.existing_file("upstream.ca_bundle"),
            insecure=insecure,
            connect_timeout=self.number("upstream.connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0.1),
            read_timeout=self.number("upstream.read_timeout", DEFAULT_READ_TIMEOUT, 0.1),
            max_connections=self.integer("upstream.max_connections", DEFAULT_MAX_CONNECTIONS, 1),
        )

    def existing_file(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"{self.settings[key].source}: file {path} does not exist")
        return path

    def secret(self, key: str) -> Secret | None:
        """A secret from `key` or from the file named by `key_file` (not both)."""
        direct, from_file = self.settings.get(key), self.existing_file(f"{key}_file")
        if direct is not None and from_file is not None:
            raise ConfigError(f"both {direct.source} and {self.settings[key + '_file'].source} "
                              "are set; keep one")
        if from_file is not None:
            self.check_permissions(from_file, self.settings[f"{key}_file"].source)
            value = _read_secret_file(from_file, self.settings[f"{key}_file"].source)
        elif direct is not None:
            value = str(direct.value)
        else:
            return None
        return Secret(value) if value else None

    def check_permissions(self, path: Path, source: str) -> None:
        """Warn, as ssh does, when group or others may read or change `path`."""
        mode = path.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            self.warnings.append(f"{source}: {path} can be changed by other users (who could "
                                 f"point the proxy at their own server); run: chmod 600 {path}")
        elif mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.warnings.append(f"{source}: {path} is readable by other users; "
                                 f"run: chmod 600 {path}")

    def auth(self) -> AuthConfig:
        password = self.secret("auth.password")
        if password is None:
            raise ConfigError("no password: set ZCOMPUTE_PASSWORD or ZCOMPUTE_PASSWORD_FILE "
                              "(auth.password_file in the config file)")
        totp = self.secret("auth.totp_secret")
        return AuthConfig(
            username=self.required("auth.username", "YOUR_USER"),
            account=self.required("auth.account", "YOUR_ACCOUNT"),
            password=password,
            totp_secret=Secret(parse_totp_secret(totp, self._totp_source())) if totp else None,
            mfa=self.choice("auth.mfa", MFA_MODES, "auto"),  # type: ignore[arg-type]
        )

    def auth_if_complete(self) -> AuthConfig | None:
        try:
            return self.auth()
        except ConfigError:
            return None

    def _totp_source(self) -> str:
        setting = self.settings.get("auth.totp_secret") or self.settings["auth.totp_secret_file"]
        return setting.source

    def tokens(self) -> TokenConfig:
        margin = self.settings.get("tokens.renew_margin")
        return TokenConfig(
            renew_margin=self.number("tokens.renew_margin", 0, 0) if margin else None,
            replay_limit=self.integer("tokens.replay_limit", DEFAULT_REPLAY_LIMIT, 0),
            mfa_wait=self.number("tokens.mfa_wait", DEFAULT_MFA_WAIT, 1),
            revoke_on_exit=self.flag("tokens.revoke_on_exit"),
        )

    def security(self, listen: ListenAddress) -> SecurityConfig:
        """The `[security]` settings, and the rule that a non-loopback listen needs a key."""
        key = self.access_key()
        allow_remote = self.flag("security.allow_remote")
        peers = self.networks("security.allowed_peers")
        if not listen.loopback and key is None and not allow_remote:
            raise ConfigError(_remote_without_key_message(
                listen, self.settings.get("proxy.listen", Setting("", "proxy.listen")).source))
        if allow_remote:
            self.warnings.append(
                "security.allow_remote is on (--allow-remote): clients on other machines may "
                "connect" + ("" if key else " without any access key") + " and act with your "
                "zCompute identity; keep the port behind a firewall or network policy")
        return SecurityConfig(
            allowed_hosts=self.listed("security.allowed_hosts", parse_allowed_host),
            allowed_origins=self.listed("security.allowed_origins", parse_allowed_origin),
            allowed_peers=peers if peers is not None
            else (LOOPBACK_NETWORKS if listen.loopback else None),
            access_key=key, allow_remote=allow_remote)

    def access_key(self) -> Secret | None:
        """The access key from ZCOMPUTE_ACCESS_KEY or a key file, checked for strength."""
        key = self.secret("security.access_key")
        if key is None:
            return None
        source = (self.settings.get("security.access_key")
                  or self.settings["security.access_key_file"]).source
        if len(key.reveal()) < MIN_ACCESS_KEY_LENGTH or not _ACCESS_KEY.fullmatch(key.reveal()):
            raise ConfigError(
                f"{source}: the access key must be at least {MIN_ACCESS_KEY_LENGTH} characters "
                "of A-Z a-z 0-9 - . _ ~ + / (it travels in a header; fingerprint "
                f"{key.fingerprint}); make one with: zcompute-proxy serve --generate-access-key "
                "FILE")
        return key

    def listed(self, key: str, parse: Callable[[str, str], str]) -> tuple[str, ...]:
        """A list setting (TOML array, or comma/space separated text), each item parsed."""
        setting = self.settings.get(key)
        if setting is None:
            return ()
        value = setting.value
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{setting.source} must be a list of strings, like ["a", "b"]')
        items = [item for text in value for item in text.replace(",", " ").split()]
        return tuple(dict.fromkeys(parse(item, setting.source) for item in items))

    def networks(self, key: str) -> tuple[IPNetwork, ...] | None:
        """CIDRs (`10.0.0.0/8`, `fd00::/8`, single addresses); None when not set."""
        if key not in self.settings:
            return None
        return tuple(ipaddress.ip_network(text) for text in self.listed(key, parse_network))


def _read_secret_file(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read {path}: {exc.__class__.__name__}") from None


def parse_totp_secret(secret: Secret, source: str) -> str:
    """A base32 secret, from base32 text or an `otpauth://totp/...` URI; errors show no secret."""
    text = secret.reveal().strip()
    if text.startswith("otpauth://"):
        try:
            otp = pyotp.parse_uri(text)
        except ValueError:
            raise ConfigError(f"{source} is not a valid otpauth:// URI") from None
        if not isinstance(otp, pyotp.TOTP):
            raise ConfigError(f"{source} is an otpauth URI but not for TOTP")
        text = otp.secret
    normalized = text.replace(" ", "").upper()
    try:
        pyotp.TOTP(normalized).now()
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        raise ConfigError(f"{source} is not a base32 TOTP secret or otpauth:// URI "
                          f"(fingerprint {secret.fingerprint})") from None
    return normalized


def parse_listen(text: str, source: str) -> ListenAddress:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` (loopback) or `unix:/path/to/socket`."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith(("/", "~", ".")):
            raise ConfigError(f"{source} must be unix:/path/to/socket, got {text!r}")
        return ListenAddress(host="", port=0, unix=Path(path).expanduser())
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{source} must be HOST:PORT like 127.0.0.1:8080, got {text!r}")
    return ListenAddress(host=host, port=int(port_text))


def _remote_without_key_message(listen: ListenAddress, source: str) -> str:
    return (f"{source} is {listen}, which other machines can reach, and no access key is set: "
            "anyone who can connect would act with your zCompute identity. Keep the default "
            "127.0.0.1, or set an access key (zcompute-proxy serve --generate-access-key FILE, "
            "then ZCOMPUTE_ACCESS_KEY_FILE=FILE or security.access_key_file), or, if a firewall "
            "or network policy decides who connects, pass --allow-remote "
            "(security.allow_remote = true)")


def parse_allowed_host(text: str, source: str) -> str:
    """`name`, `name:port`, `[v6]` or `[v6]:port`, lower-cased; nothing else."""
    host = text.strip().lower()
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name = host
    if not _HOST_NAME.fullmatch(name) or (sep and not (port.isdigit() and int(port) < 65536)):
        raise ConfigError(f"{source}: {text!r} is not a host name; give NAME or NAME:PORT "
                          "(no scheme, path or wildcard), e.g. zcompute-proxy.internal:8080")
    return host


def parse_allowed_origin(text: str, source: str) -> str:
    """`scheme://host[:port]` exactly as a browser sends it in `Origin`, lower-cased."""
    origin = text.strip().lower()
    scheme, sep, host = origin.partition("://")
    if scheme not in ("http", "https") or not sep or not host or "/" in host:
        raise ConfigError(f"{source}: {text!r} is not a web origin; give scheme://host[:port] "
                          "with no path, e.g. http://localhost:3000 (never * or null)")
    parse_allowed_host(host, source)
    return origin


def parse_network(text: str, source: str) -> str:
    """A CIDR or a single address, in its canonical form."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ConfigError(f"{source}: {text!r} is not an address or CIDR like 10.0.0.0/8 "
                          "or fd00::/8") from None
