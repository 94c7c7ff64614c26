"""The `[security]` settings: parsing, the non-loopback rule, errors that name the key and
never show a secret, and permission warnings for config and secret files."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from proxy.config import ENVIRONMENT, FLAGS, LOOPBACK_NETWORKS
from proxy.config_loader import load
from proxy.errors import ConfigError
from tests.processes import ROOT

BASE_ENV = {
    "ZCOMPUTE_URL": "https://zc.example.com",
    "ZCOMPUTE_USERNAME": "me",
    "ZCOMPUTE_ACCOUNT": "acme",
    "ZCOMPUTE_PASSWORD": "pw-secret-1",
    "HOME": "/nonexistent",
}
KEY = "Zx9-access-key-for-config-tests-0123456789"


def _write(tmp_path: Path, text: str, name: str = "zcompute-proxy.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_are_loopback_only_without_a_key() -> None:
    """Out of the box: loopback peers, no extra hosts or origins, no key, remote off."""
    security = load(environ=BASE_ENV).security
    assert security.allowed_peers == LOOPBACK_NETWORKS
    assert (security.allowed_hosts, security.allowed_origins) == ((), ())
    assert security.access_key is None
    assert not security.allow_remote


def test_file_environment_and_flags_feed_the_security_section(tmp_path: Path) -> None:
    """Lists come from TOML arrays, comma-separated env values or repeated flags (flags win)."""
    key_file = _write(tmp_path, KEY + "\n", "key")
    path = _write(tmp_path, f'[security]\nallowed_hosts = ["Proxy.Internal", "side:8080"]\n'
                            f'allowed_origins = ["http://localhost:3000"]\n'
                            f'access_key_file = "{key_file}"\n')
    env = {**BASE_ENV, "ZCOMPUTE_ALLOWED_PEERS": "10.0.0.0/8, fd00::/8"}
    config = load(config_file=path, environ=env,
                  flags={"security.allowed_origins": ["https://ui.example:8443"]})
    security = config.security
    assert security.allowed_hosts == ("proxy.internal", "side:8080")
    assert security.allowed_origins == ("https://ui.example:8443",)
    assert security.allowed_peers == (ipaddress.ip_network("10.0.0.0/8"),
                                      ipaddress.ip_network("fd00::/8"))
    assert security.access_key is not None
    assert security.access_key.reveal() == KEY
    assert KEY not in repr(config)


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.2:8080",
                                    "proxy.example.com:8080"])
def test_non_loopback_listen_needs_a_key_or_allow_remote(listen: str) -> None:
    """Binding beyond loopback without a key is an error naming --listen and both fixes."""
    with pytest.raises(ConfigError) as caught:
        load(environ=BASE_ENV, flags={"proxy.listen": listen})
    message = caught.value.message
    assert message.startswith("--listen is ")
    assert "other machines can reach" in message
    assert "--generate-access-key" in message
    assert "ZCOMPUTE_ACCESS_KEY_FILE" in message
    assert "--allow-remote" in message


def test_non_loopback_listen_with_a_key_or_allow_remote() -> None:
    """A key makes any peer address acceptable (the key decides); --allow-remote warns."""
    keyed = load(environ={**BASE_ENV, "ZCOMPUTE_ACCESS_KEY": KEY},
                 flags={"proxy.listen": "0.0.0.0:8080"})
    assert keyed.security.allowed_peers is None
    assert not [w for w in keyed.warnings if "allow_remote" in w]
    remote = load(environ={**BASE_ENV, "ZCOMPUTE_ALLOW_REMOTE": "true"},
                  flags={"proxy.listen": "0.0.0.0:8080"})
    assert remote.security.allowed_peers is None
    (warning,) = [w for w in remote.warnings if "allow_remote" in w]
    assert "without any access key" in warning
    narrowed = load(environ={**BASE_ENV, "ZCOMPUTE_ACCESS_KEY": KEY,
                             "ZCOMPUTE_ALLOWED_PEERS": "10.1.2.3"},
                    flags={"proxy.listen": "0.0.0.0:8080"})
    assert narrowed.security.allowed_peers == (ipaddress.ip_network("10.1.2.3/32"),)


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.0.0.2:9000", "localhost:8080",
                                    "[::1]:8080", ":8080", "unix:/tmp/zcp.sock"])
def test_loopback_and_unix_listen_need_nothing(listen: str) -> None:
    """Loopback addresses and unix sockets start without a key."""
    config = load(environ=BASE_ENV, flags={"proxy.listen": listen})
    assert config.listen.loopback
    if listen.startswith("unix:"):
        assert str(config.listen) == listen


@pytest.mark.parametrize(("env", "expected"), [
    ({"ZCOMPUTE_ALLOWED_HOSTS": "http://evil.example"}, "ZCOMPUTE_ALLOWED_HOSTS: "),
    ({"ZCOMPUTE_ALLOWED_HOSTS": "*"}, "ZCOMPUTE_ALLOWED_HOSTS: '*' is not a host name"),
    ({"ZCOMPUTE_ALLOWED_HOSTS": "a:99999"}, "ZCOMPUTE_ALLOWED_HOSTS: 'a:99999'"),
    ({"ZCOMPUTE_ALLOWED_ORIGINS": "*"}, "ZCOMPUTE_ALLOWED_ORIGINS: '*' is not a web origin"),
    ({"ZCOMPUTE_ALLOWED_ORIGINS": "null"}, "never * or null"),
    ({"ZCOMPUTE_ALLOWED_ORIGINS": "http://a.example/path"}, "with no path"),
    ({"ZCOMPUTE_ALLOWED_PEERS": "10.0.0.0/33"}, "ZCOMPUTE_ALLOWED_PEERS: '10.0.0.0/33'"),
    ({"ZCOMPUTE_ALLOWED_PEERS": "everyone"}, "is not an address or CIDR"),
    ({"ZCOMPUTE_ALLOW_REMOTE": "maybe"}, "ZCOMPUTE_ALLOW_REMOTE must be true or false"),
    ({"ZCOMPUTE_ACCESS_KEY": "short-key"}, "ZCOMPUTE_ACCESS_KEY: the access key must be"),
    ({"ZCOMPUTE_ACCESS_KEY": "has spaces in it but is long enough"}, "it travels in a header"),
    ({"ZCOMPUTE_ACCESS_KEY_FILE": "/nonexistent/key"}, "ZCOMPUTE_ACCESS_KEY_FILE: file"),
])
def test_bad_security_values_name_the_key(env: dict[str, str], expected: str) -> None:
    """Each bad value is one error naming the setting as the user wrote it."""
    with pytest.raises(ConfigError) as caught:
        load(environ={**BASE_ENV, **env})
    assert expected in caught.value.message
    for secret in ("short-key", "has spaces in it but is long enough"):
        assert secret not in caught.value.message


def test_access_key_is_never_read_from_the_config_file(tmp_path: Path) -> None:
    """`security.access_key` in the file is refused: only a key file or the environment."""
    path = _write(tmp_path, f'[security]\naccess_key = "{KEY}"\n')
    with pytest.raises(ConfigError) as caught:
        load(config_file=path, environ=BASE_ENV)
    assert "security.access_key" in caught.value.message
    assert "security.access_key_file" in caught.value.message
    assert KEY not in caught.value.message


def test_bad_list_type_in_the_file_names_the_key(tmp_path: Path) -> None:
    """A number where a list of strings belongs names `security.allowed_hosts in FILE`."""
    path = _write(tmp_path, "[security]\nallowed_hosts = 3\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file=path, environ=BASE_ENV)
    assert caught.value.message == (f"security.allowed_hosts in {path} must be a list of "
                                    'strings, like ["a", "b"]')


@pytest.mark.parametrize(("mode", "words"), [
    (0o600, None), (0o400, None), (0o640, "is readable by other users"),
    (0o604, "is readable by other users"), (0o620, "can be changed by other users"),
    (0o666, "can be changed by other users"),
])
def test_config_and_secret_file_permissions_warn(tmp_path: Path, mode: int,
                                                 words: str | None) -> None:
    """Like ssh: a config or key file open to group or others gives a warning with the fix."""
    key_file = _write(tmp_path, KEY, "key", mode)
    path = _write(tmp_path, f'[security]\naccess_key_file = "{key_file}"\n', mode=mode)
    warnings = load(config_file=path, environ=BASE_ENV).warnings
    if words is None:
        assert warnings == ()
        return
    assert any(w.startswith(f"config file: {path} {words}")
               and w.endswith(f"run: chmod 600 {path}") for w in warnings)
    assert any(w.startswith(f"security.access_key_file in {path}: {key_file} {words}")
               and w.endswith(f"run: chmod 600 {key_file}") for w in warnings)


def test_security_md_documents_every_security_setting() -> None:
    """SECURITY.md's table names every [security] key, its environment variable and flag."""
    text = (ROOT / "SECURITY.md").read_text()
    for key, variable in ENVIRONMENT.items():
        if key.startswith("security."):
            assert f"`{variable}`" in text, variable
            if not key.endswith("access_key"):
                assert f"`{key.removeprefix('security.')}`" in text, key
    for key, flag in FLAGS.items():
        if key.startswith("security."):
            assert f"`{flag}" in text, flag
