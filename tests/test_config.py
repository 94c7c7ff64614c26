"""Configuration: precedence, file discovery, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from proxy.config import parse_route_flag
from proxy.config_loader import load
from proxy.errors import ConfigError

BASE_ENV = {
    "ZCOMPUTE_URL": "https://zc.example.com",
    "ZCOMPUTE_USERNAME": "me",
    "ZCOMPUTE_ACCOUNT": "acme",
    "ZCOMPUTE_PASSWORD": "pw-secret-1",
    "HOME": "/nonexistent",
}
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def _write(tmp_path: Path, text: str, name: str = "zcompute-proxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_defaults_and_identity_url_derived_from_upstream() -> None:
    """With only the required settings, defaults fill in and identity sits on the upstream."""
    config = load(environ=BASE_ENV)
    assert str(config.listen) == "127.0.0.1:8080"
    assert str(config.upstream.identity_url) == "https://zc.example.com/api/v2/identity/auth"
    assert config.auth is not None
    assert config.default_project is None
    assert config.auth.password.reveal() == "pw-secret-1"


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    """Flags over environment over file over defaults."""
    path = _write(tmp_path, '[upstream]\nurl = "https://file.example.com"\n'
                            '[auth]\nproject = "from-file"\naccount = "file-account"\n'
                            '[proxy]\nlisten = "127.0.0.1:9000"\n')
    env = {**BASE_ENV, "ZCOMPUTE_PROJECT": "from-env"}
    config = load(config_file=path, environ=env, flags={"auth.project": "from-flag"})
    assert config.auth is not None
    assert config.default_project == "from-flag"
    assert config.auth.account == "acme"  # env beats file
    assert str(config.upstream.url) == "https://zc.example.com/"
    assert config.listen.port == 9000  # file beats default
    assert config.config_file == path


def test_config_file_found_in_working_directory(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """./zcompute-proxy.toml is read without --config."""
    _write(tmp_path, '[auth]\nproject = "here"\n')
    monkeypatch.chdir(tmp_path)
    config = load(environ=BASE_ENV)
    assert config.auth is not None
    assert config.default_project == "here"


def test_config_file_found_in_xdg_config_home(tmp_path: Path) -> None:
    """~/.config/zcompute-proxy/config.toml (XDG_CONFIG_HOME) is read without --config."""
    (tmp_path / "zcompute-proxy").mkdir()
    _write(tmp_path / "zcompute-proxy", '[auth]\nproject = "xdg"\n', "config.toml")
    config = load(environ={**BASE_ENV, "XDG_CONFIG_HOME": str(tmp_path)})
    assert config.auth is not None
    assert config.default_project == "xdg"


@pytest.mark.parametrize(("env", "flags", "fragment"), [
    ({"ZCOMPUTE_URL": None}, {}, "set ZCOMPUTE_URL="),
    ({"ZCOMPUTE_URL": "zc.example.com"}, {}, "ZCOMPUTE_URL must be an http(s) URL"),
    ({}, {"upstream.url": "ftp://x"}, "--upstream must be an http(s) URL"),
    ({"ZCOMPUTE_USERNAME": None}, {}, "set ZCOMPUTE_USERNAME="),
    ({"ZCOMPUTE_ACCOUNT": None}, {}, "set ZCOMPUTE_ACCOUNT="),
    ({"ZCOMPUTE_PASSWORD": None}, {}, "set ZCOMPUTE_PASSWORD or ZCOMPUTE_PASSWORD_FILE"),
    ({}, {"proxy.listen": "localhost"}, "--listen must be HOST:PORT"),
    ({"ZCOMPUTE_LISTEN": "127.0.0.1:99999"}, {}, "ZCOMPUTE_LISTEN must be HOST:PORT"),
    ({"ZCOMPUTE_INSECURE": "maybe"}, {}, "ZCOMPUTE_INSECURE must be true or false"),
    ({"ZCOMPUTE_MFA": "sometimes"}, {}, "ZCOMPUTE_MFA must be one of auto, combined, receipt"),
    ({"ZCOMPUTE_RENEW_MARGIN": "soon"}, {}, "ZCOMPUTE_RENEW_MARGIN must be a number"),
    ({"ZCOMPUTE_TOTP_SECRET": "not base32!"}, {}, "ZCOMPUTE_TOTP_SECRET is not a usable TOTP"),
    ({"ZCOMPUTE_CA_BUNDLE": "/no/such/ca.pem"}, {}, "ZCOMPUTE_CA_BUNDLE: file /no/such"),
    ({"ZCOMPUTE_PASSWORD_FILE": "/no/such/file"}, {}, "ZCOMPUTE_PASSWORD_FILE: file /no/such"),
    ({"ZCOMPUTE_URL": "https://me:pw-secret-1@zc.example.com"}, {},
     "ZCOMPUTE_URL must not carry user:password"),
    ({}, {"proxy.listen": "http://127.0.0.1:8080"}, "--listen takes HOST:PORT"),
    ({"ZCOMPUTE_CA_BUNDLE": "/etc/hostname"}, {}, "holds no usable PEM certificate"),
    ({"ZCOMPUTE_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt", "ZCOMPUTE_INSECURE": "1"},
     {}, "are both set: keep the CA bundle"),
])
def test_bad_values_name_the_key_and_the_fix(env: dict[str, str | None], flags: dict[str, str],
                                             fragment: str) -> None:
    """Each bad or missing value raises one message naming where it came from."""
    merged = {k: v for k, v in {**BASE_ENV, **env}.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        load(environ=merged, flags=flags)
    assert fragment in caught.value.message
    assert "pw-secret-1" not in caught.value.message
    assert "not base32!" not in caught.value.message


def test_secrets_are_refused_in_the_config_file(tmp_path: Path) -> None:
    """A password in the TOML file is an error that points to password_file / the env var."""
    path = _write(tmp_path, '[auth]\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match=r"auth\.password_file or the ZCOMPUTE_PASSWORD"):
        load(config_file=path, environ=BASE_ENV)


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    """A typo in the file names the key and the file."""
    path = _write(tmp_path, '[upstream]\nurll = "https://x"\n')
    with pytest.raises(ConfigError, match=r"unknown setting upstream.urll in .*zcompute-proxy"):
        load(config_file=path, environ=BASE_ENV)


def test_secret_files_and_otpauth_uri(tmp_path: Path) -> None:
    """Password and TOTP secret come from files; an otpauth:// URI yields its base32 secret."""
    password = _write(tmp_path, "from-file-pw\n", "pw")
    uri = pyotp.TOTP(SECRET).provisioning_uri(name="me", issuer_name="zCompute")
    totp = _write(tmp_path, uri + "\n", "totp")
    env = {**BASE_ENV, "ZCOMPUTE_PASSWORD": "", "ZCOMPUTE_PASSWORD_FILE": str(password),
           "ZCOMPUTE_TOTP_SECRET_FILE": str(totp)}
    config = load(environ=env)
    assert config.auth is not None
    assert config.auth.password.reveal() == "from-file-pw"
    assert config.auth.totp_secret is not None
    assert config.auth.totp_secret.reveal() == SECRET
    assert config.warnings == ()


def test_world_readable_secret_file_warns(tmp_path: Path) -> None:
    """A secret file others can read gives a warning with the chmod fix."""
    password = _write(tmp_path, "pw\n", "pw")
    password.chmod(0o644)
    config = load(environ={**BASE_ENV, "ZCOMPUTE_PASSWORD": "",
                           "ZCOMPUTE_PASSWORD_FILE": str(password)})
    assert any(f"chmod 600 {password}" in w for w in config.warnings)


def test_repr_of_config_shows_no_secret() -> None:
    """repr() of the whole configuration holds fingerprints, never the password or TOTP secret."""
    config = load(environ={**BASE_ENV, "ZCOMPUTE_TOTP_SECRET": SECRET})
    text = repr(config)
    assert "pw-secret-1" not in text
    assert SECRET not in text
    assert "Secret(sha256:" in text


def test_routes_from_file_and_flags_keep_order(tmp_path: Path) -> None:
    """File rules come first, then --route flags; both are validated."""
    path = _write(tmp_path, '[[routes]]\npath = "/api/v2/a/**"\nscope = "account"\n'
                            '[[routes]]\nmethod = "POST"\npath = "/api/v2/b"\n'
                            'scope = "project:ops"\n')
    config = load(config_file=path, environ=BASE_ENV, routes=["/api/v2/c/*=none"])
    assert [str(r) for r in config.routes] == [
        "/api/v2/a/**=account", "POST /api/v2/b=project:ops", "/api/v2/c/*=none"]


@pytest.mark.parametrize(("flag", "fragment"), [
    ("/api/v2/x", "needs the form [METHOD ]PATTERN=SCOPE"),
    ("api/v2/x=account", "must start with '/'"),
    ("/api/v2/x=everything", "scope must be account, project, project:NAME or none"),
    ("get /api/v2/x=account", "method must be an upper-case HTTP method"),
])
def test_bad_route_flags(flag: str, fragment: str) -> None:
    """A malformed --route says what form it takes."""
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        parse_route_flag(flag)


def test_80_bit_totp_secrets_work_and_codes_follow_rfc_6238() -> None:
    """A 16-character (80-bit) secret is accepted, and its codes match RFC 6238 by hand."""
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415
    import struct  # noqa: PLC0415

    from proxy.totp import totp  # noqa: PLC0415

    config = load(environ={**BASE_ENV, "ZCOMPUTE_TOTP_SECRET": "jbsw y3dp ehpk 3pxp"})
    assert config.auth is not None
    assert config.auth.totp_secret is not None
    secret = config.auth.totp_secret.reveal()
    assert secret == "JBSWY3DPEHPK3PXP"
    digest = hmac.new(base64.b32decode(secret), struct.pack(">Q", 1_000_000_000 // 30),
                      hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    assert totp(secret).at(1_000_000_000) == f"{number % 1_000_000:06d}"


@pytest.mark.parametrize(("value", "fragment"), [
    ("JBSWY3DP", "shorter than 80 bits"),
    ("otpauth://totp/zc:me?secret=JBSWY3DPEHPK3PXP&algorithm=SHA256",
     "only SHA1, 6-digit, 30-second TOTP"),
    ("otpauth://hotp/zc:me?secret=JBSWY3DPEHPK3PXP&counter=1", "not an otpauth://totp/ URI"),
])
def test_unusable_totp_secrets_say_why(value: str, fragment: str) -> None:
    """Short secrets and URIs for other algorithms are refused with the reason."""
    with pytest.raises(ConfigError) as caught:
        load(environ={**BASE_ENV, "ZCOMPUTE_TOTP_SECRET": value})
    assert fragment in caught.value.message
    assert "JBSWY3DP" not in caught.value.message


def test_empty_or_directory_secret_files_say_so(tmp_path: Path) -> None:
    """An empty password file, or a directory given as one, is named precisely."""
    empty = _write(tmp_path, "\n", "empty")
    with pytest.raises(ConfigError, match=r"ZCOMPUTE_PASSWORD_FILE: .*empty is empty"):
        load(environ={**BASE_ENV, "ZCOMPUTE_PASSWORD": "", "ZCOMPUTE_PASSWORD_FILE": str(empty)})
    with pytest.raises(ConfigError, match="is a directory"):
        load(environ={**BASE_ENV, "ZCOMPUTE_PASSWORD": "",
                      "ZCOMPUTE_PASSWORD_FILE": str(tmp_path)})
