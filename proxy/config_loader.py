"""Load the configuration: one TOML file, environment variables and flags, validated once.

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
import ssl
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from yarl import URL

from proxy.config import (
    CONFIG_FILE_NAME,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_IDENTITY_PATH,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MFA_WAIT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_REPLAY_LIMIT,
    ENVIRONMENT,
    FILE_KEYS,
    FLAGS,
    LOG_FORMATS,
    LOG_LEVELS,
    LOOPBACK_NETWORKS,
    MFA_MODES,
    SECRET_KEYS,
    AuthConfig,
    Config,
    IPNetwork,
    ListenAddress,
    LogConfig,
    RouteRule,
    SecurityConfig,
    TokenConfig,
    UpstreamConfig,
    expand_user,
    make_rule,
    parse_listen,
    parse_route_flag,
)
from proxy.errors import ConfigError
from proxy.secret import Secret
from proxy.totp import totp

MIN_ACCESS_KEY_LENGTH: Final = 16
_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 9110 token68: fits a header
_HOST_NAME: Final = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                               r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?|\[[0-9a-f:.]+\]")

# setting key -> environment variable
@dataclass(frozen=True, slots=True)
class Setting:
    """One raw value and where it came from, for error messages."""

    value: Any
    source: str


def load(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    routes: Sequence[str] = (),
    need_auth: bool = True,
    need_upstream: bool = True,
) -> Config:
    """Read file, environment and flags; raise `ConfigError` naming the key and the fix.

    Commands that never reach the upstream (`routes`, `login`, `reload`, `totp`) pass
    `need_auth=False, need_upstream=False`; a missing upstream is then UNSET_UPSTREAM.
    """
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
        upstream=builder.upstream(need_upstream),
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
        path = expand_user(candidate, "XDG_CONFIG_HOME or HOME")
        if path.is_file():
            return path
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


def _from_environment(environ: Mapping[str, str]) -> dict[str, Setting]:
    return {key: Setting(environ[var], var) for key, var in ENVIRONMENT.items()
            if environ.get(var, "") != ""}


UNSET_UPSTREAM: Final = "http://upstream.invalid"  # RFC 2606: a name that never resolves


class _Builder:
    """Turns raw settings into typed values, with one precise error per bad value."""

    def __init__(self, settings: Mapping[str, Setting]) -> None:
        self.settings = dict(settings)
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
        if url.user is not None or url.password is not None:
            raise ConfigError(f"{self.settings[key].source} must not carry user:password (it "
                              "would show in logs and status); use ZCOMPUTE_USERNAME and "
                              "ZCOMPUTE_PASSWORD_FILE")
        return url

    def listen(self) -> ListenAddress:
        return parse_listen(self.text("proxy.listen") or DEFAULT_LISTEN,
                            self.settings.get("proxy.listen", Setting("", "--listen")).source)

    def upstream(self, needed: bool) -> UpstreamConfig:
        if not needed and "upstream.url" not in self.settings:
            self.settings["upstream.url"] = Setting(UNSET_UPSTREAM, "default")
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
            ca_bundle=self.ca_bundle(insecure),
            insecure=insecure,
            connect_timeout=self.number("upstream.connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0.1),
            read_timeout=self.number("upstream.read_timeout", DEFAULT_READ_TIMEOUT, 0.1),
            max_connections=self.integer("upstream.max_connections", DEFAULT_MAX_CONNECTIONS, 1),
        )

    def ca_bundle(self, insecure: bool) -> Path | None:
        """A CA bundle that really holds certificates; it contradicts `insecure`."""
        path = self.existing_file("upstream.ca_bundle")
        if path is None:
            return None
        source = self.settings["upstream.ca_bundle"].source
        if insecure:
            raise ConfigError(f"{source} and upstream.insecure are both set: keep the CA "
                              "bundle (verified TLS) and drop insecure")
        try:
            ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{source}: {path} holds no usable PEM certificate "
                              f"({exc.__class__.__name__}); give the CA's .pem file") from None
        return path

    def existing_file(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        source = self.settings[key].source
        path = expand_user(Path(value), source)
        if path.is_dir():
            raise ConfigError(f"{source}: {path} is a directory; give the file inside it")
        if not path.is_file():
            raise ConfigError(f"{source}: file {path} does not exist")
        return path

    def secret(self, key: str) -> Secret | None:
        """A secret from `key` or from the file named by `key_file` (not both)."""
        direct, from_file = self.settings.get(key), self.existing_file(f"{key}_file")
        if direct is not None and from_file is not None:
            raise ConfigError(f"both {direct.source} and {self.settings[key + '_file'].source} "
                              "are set; keep one")
        if from_file is not None:
            source = self.settings[f"{key}_file"].source
            self.check_permissions(from_file, source)
            value = _read_secret_file(from_file, source)
            if not value:
                raise ConfigError(f"{source}: {from_file} is empty; write the secret in it")
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
    except PermissionError:
        raise ConfigError(f"{source}: {path} is not readable by this user; chown it to the "
                          "user the proxy runs as, then chmod 600") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read {path} ({exc.__class__.__name__}); it must "
                          "be a UTF-8 text file") from None


def parse_totp_secret(secret: Secret, source: str) -> str:
    """A base32 secret, from base32 text or an `otpauth://totp/...` URI; errors show no secret."""
    text = secret.reveal().strip()
    if text.startswith("otpauth://"):
        text = _secret_from_uri(text, source)
    normalized = text.replace(" ", "").upper()
    try:
        totp(normalized)
    except ValueError as exc:
        raise ConfigError(f"{source} is not a usable TOTP secret ({exc}; give the base32 "
                          "secret or the otpauth:// URI your authenticator was set up with; "
                          f"fingerprint {secret.fingerprint})") from None
    return normalized


def _secret_from_uri(uri: str, source: str) -> str:
    """The secret of an `otpauth://totp/...` URI for SHA1, 6 digits, 30 s (what zCompute uses)."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    if parts.netloc != "totp" or "secret" not in query:
        raise ConfigError(f"{source} is not an otpauth://totp/ URI with a secret")
    unsupported = {key: value[0] for key, value in query.items()
                   if (key, value[0].upper()) not in URI_DEFAULTS and key in URI_PARAMETERS}
    if unsupported:
        raise ConfigError(f"{source}: only SHA1, 6-digit, 30-second TOTP is supported, the URI "
                          f"asks for {', '.join(f'{k}={v}' for k, v in unsupported.items())}")
    return query["secret"][0]


URI_PARAMETERS: Final = frozenset({"algorithm", "digits", "period"})
URI_DEFAULTS: Final = frozenset({("algorithm", "SHA1"), ("digits", "6"), ("period", "30")})


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
