"""Build, cache, start and stop the local Keystone + protected-service tier (stdlib only).

Layout of the cache dir ($ZCP_KEYSTONE_HOME, default ~/.cache/zcompute-proxy/keystone):

- `venv-<key>/`: the throwaway venv (keystone, keystonemiddleware, gunicorn, pyotp), keyed on
  the Python version, constants.VENV_PINS and constraints.txt; `.zcp-complete` marks it done.
- `seed-<key>/`: a bootstrapped Keystone (sqlite db, fernet and credential keys) with the
  tenant of constants.py already created; keyed on the venv key and constants.py.
- `lock`: serialises concurrent setups.

Each `start()` copies the seed into a fresh run dir (so every session starts with no tokens,
no revocations and no lockouts), starts Keystone and the service under gunicorn on free
loopback ports, and points the catalog's identity endpoint at the new port.

Every subprocess and every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import constants as C

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints.txt"
# Bump when the seed-building code changes in a way that needs a new seed database.
SEED_FORMAT = 1
_MARKER = ".zcp-complete"
_LOCK_TIMEOUT_S = 900


class TierError(RuntimeError):
    """The tier could not be set up or started (the message says why, with log tails)."""


def log(msg: str) -> None:
    print(f"[keystone-tier] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cache paths and keys


def default_home() -> Path:
    env = os.environ.get("ZCP_KEYSTONE_HOME", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "zcompute-proxy" / "keystone"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def venv_key() -> str:
    py = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}".encode()
    return _sha(py, "\n".join(C.VENV_PINS).encode(), CONSTRAINTS.read_bytes())


def seed_key() -> str:
    return _sha(
        venv_key().encode(),
        str(SEED_FORMAT).encode(),
        (HERE / "constants.py").read_bytes(),
    )


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "a+") as fh:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TierError(f"{home}/lock still held after {_LOCK_TIMEOUT_S}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _prune(home: Path, prefix: str, keep: str) -> None:
    """Delete stale cache entries of ours (other keys), to bound disk use."""
    for entry in home.glob(prefix + "*"):
        if entry.name != keep and entry.is_dir():
            log(f"removing stale cache entry {entry}")
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------- subprocesses


def _run(cmd: list[str], timeout: float, what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TierError(f"{what}: timed out after {timeout}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise TierError(f"{what}: exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return proc.stdout


# ---------------------------------------------------------------- the venv


def ensure_venv(home: Path) -> Path:
    """Return the tier's venv, creating it (once per pin set) if needed. Caller holds the lock."""
    name = f"venv-{venv_key()}"
    venv = home / name
    pins = "\n".join(C.VENV_PINS) + "\n"
    marker = venv / _MARKER
    if marker.is_file() and marker.read_text() == pins and (venv / "bin" / "gunicorn").exists():
        return venv
    _prune(home, "venv-", name)
    if venv.exists():
        shutil.rmtree(venv)
    t0 = time.monotonic()
    log(f"creating venv {venv}")
    _run([sys.executable, "-m", "venv", str(venv)], C.VENV_CREATE_TIMEOUT_S, "python -m venv")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-warn-script-location",
            "--constraint",
            str(CONSTRAINTS),
            *C.VENV_PINS,
        ],
        C.PIP_INSTALL_TIMEOUT_S,
        "pip install",
        env=env,
    )
    marker.write_text(pins)
    log(f"venv ready in {time.monotonic() - t0:.1f}s")
    return venv


# ---------------------------------------------------------------- config files


def keystone_conf(data: Path) -> str:
    keys = data / "fernet-keys"
    return f"""\
[DEFAULT]
debug = false
use_stderr = true

[database]
connection = sqlite:///{data / "keystone.db"}

[cache]
# Keystone recomputes role assignments several times per request without its cache (~300 ms
# per validation here); the in-process cache brings that to a few ms. Revocations, role and
# endpoint changes made through the API invalidate it as in production.
enabled = true
backend = oslo_cache.dict
expiration_time = 600

[token]
provider = fernet
expiration = {C.TOKEN_EXPIRATION_S}

[receipt]
provider = fernet
expiration = {C.RECEIPT_EXPIRATION_S}

[fernet_tokens]
key_repository = {keys}
max_active_keys = 3

[fernet_receipts]
key_repository = {keys}
max_active_keys = 3

[credential]
key_repository = {data / "credential-keys"}

[auth]
methods = password,token,totp

[identity]
password_hash_algorithm = bcrypt
password_hash_rounds = {C.PASSWORD_HASH_ROUNDS}

[totp]
included_previous_windows = 1

[security_compliance]
lockout_failure_attempts = {C.LOCKOUT_FAILURE_ATTEMPTS}
lockout_duration = {C.LOCKOUT_DURATION_S}
"""


def service_conf(keystone_url: str) -> str:
    return f"""\
[DEFAULT]
use_stderr = true

[keystone_authtoken]
www_authenticate_uri = {keystone_url}
auth_url = {keystone_url}
auth_type = password
username = {C.SERVICE_USER}
password = {C.SERVICE_PASSWORD}
user_domain_name = {C.DEFAULT_DOMAIN}
project_name = {C.SERVICE_PROJECT}
project_domain_name = {C.DEFAULT_DOMAIN}
interface = public
region_name = {C.REGION}
delay_auth_decision = false
token_cache_time = {C.SERVICE_TOKEN_CACHE_TIME}
include_service_catalog = false
http_connect_timeout = 10
http_request_max_retries = 1
"""


# ---------------------------------------------------------------- HTTP (stdlib)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = C.HTTP_TIMEOUT_S,
) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    if not url.startswith("http://127.0.0.1:"):
        raise TierError(f"the tier only talks to loopback, not {url}")
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (checked above)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers.items()), exc.read()
        exc.close()
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return Reply(status, hdrs, parsed)


def _expect(reply: Reply, statuses: tuple[int, ...], what: str) -> Reply:
    if reply.status not in statuses:
        raise TierError(f"{what}: HTTP {reply.status}: {reply.body!r}")
    return reply


def password_auth(user: str, password: str, domain: str) -> dict[str, Any]:
    return {
        "methods": ["password"],
        "password": {"user": {"name": user, "password": password, "domain": {"name": domain}}},
    }


def admin_token(keystone_url: str) -> str:
    """A system-scoped token of the bootstrap admin (policy needs system scope for domains)."""
    body = {
        "auth": {
            "identity": password_auth(C.ADMIN_USER, C.ADMIN_PASSWORD, C.DEFAULT_DOMAIN),
            "scope": {"system": {"all": True}},
        }
    }
    reply = _expect(
        http("POST", f"{keystone_url}/auth/tokens?nocatalog", body), (201,), "admin login"
    )
    token = reply.header("X-Subject-Token")
    if not token:
        raise TierError("admin login: no X-Subject-Token")
    return token


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One gunicorn process group on loopback, with its own log and control socket."""

    def __init__(
        self,
        *,
        name: str,
        venv: Path,
        run_dir: Path,
        app: str,
        env: dict[str, str],
        health_url_fmt: str,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.venv = venv
        self.run_dir = run_dir
        self.app = app
        self.env = env
        self.health_url_fmt = health_url_fmt
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = run_dir / f"{name}.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = C.SERVER_START_TIMEOUT_S) -> None:
        last_error: TierError | None = None
        for _attempt in range(3):  # a free port may be taken between probe and bind
            self.port = free_port()
            try:
                self._start_once(timeout)
                return
            except TierError as exc:
                last_error = exc
                self.stop()
                if "Address already in use" not in self.log_tail():
                    raise
        assert last_error is not None
        raise last_error

    def _start_once(self, timeout: float) -> None:
        ctl_dir = self.run_dir / f"gunicorn-{self.name}"
        ctl_dir.mkdir(exist_ok=True)
        cmd = [
            str(self.venv / "bin" / "gunicorn"),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            "1",
            "--timeout",
            "60",
            "--graceful-timeout",
            "3",
            "--control-socket",
            str(ctl_dir / "gunicorn.ctl"),
            "--pythonpath",
            str(self.run_dir),
            "--chdir",
            str(self.run_dir),
            "--error-logfile",
            "-",
            *self.extra_args,
            self.app,
        ]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        env["HOME"] = str(ctl_dir)  # anything gunicorn puts under ~ stays per server
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        url = self.health_url_fmt.format(port=self.port)
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                raise TierError(
                    f"{self.name} exited with {self.proc.returncode} while starting;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                reply = http("GET", url, timeout=2)
                if reply.status == 200:
                    return
                last = f"HTTP {reply.status}"
            except (OSError, urllib.error.URLError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise TierError(
                    f"{self.name} not ready at {url} after {timeout}s ({last});"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=C.SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM; killing its process group {proc.pid}")
        # gunicorn workers are in the group we created (pgid == master pid): leave none behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=C.SERVER_STOP_TIMEOUT_S)


def _copy_wsgi_modules(run_dir: Path) -> None:
    for name in ("wsgi_keystone.py", "wsgi_service.py"):
        shutil.copyfile(HERE / name, run_dir / name)


def _write_keystone_conf(run_dir: Path) -> None:
    (run_dir / "keystone.conf").write_text(keystone_conf(run_dir))


def keystone_server(venv: Path, run_dir: Path) -> Server:
    return Server(
        name="keystone",
        venv=venv,
        run_dir=run_dir,
        app="wsgi_keystone:application",
        env={"OS_KEYSTONE_CONFIG_DIR": str(run_dir), "OS_KEYSTONE_CONFIG_FILES": "keystone.conf"},
        health_url_fmt="http://127.0.0.1:{port}/v3",
    )


# ---------------------------------------------------------------- the seed


def _keystone_manage(venv: Path, run_dir: Path, *args: str) -> None:
    cmd = [
        str(venv / "bin" / "keystone-manage"),
        "--config-file",
        str(run_dir / "keystone.conf"),
        *args,
    ]
    _run(cmd, C.KEYSTONE_MANAGE_TIMEOUT_S, f"keystone-manage {args[0]}")


def _build_seed(venv: Path, seed: Path) -> None:
    """Bootstrap Keystone in `seed`, start it once, create the tenant by REST, stop it."""
    seed.mkdir(parents=True)
    _write_keystone_conf(seed)
    _copy_wsgi_modules(seed)
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    t0 = time.monotonic()
    _keystone_manage(venv, seed, "db_sync")
    owner = ("--keystone-user", user, "--keystone-group", group)
    _keystone_manage(venv, seed, "fernet_setup", *owner)
    _keystone_manage(venv, seed, "credential_setup", *owner)
    port = free_port()
    _keystone_manage(
        venv,
        seed,
        "bootstrap",
        "--bootstrap-password",
        C.ADMIN_PASSWORD,
        "--bootstrap-username",
        C.ADMIN_USER,
        "--bootstrap-project-name",
        C.ADMIN_PROJECT,
        "--bootstrap-role-name",
        "admin",
        "--bootstrap-service-name",
        "keystone",
        "--bootstrap-region-id",
        C.REGION,
        "--bootstrap-public-url",
        f"http://127.0.0.1:{port}/v3",
    )
    log(f"keystone-manage steps took {time.monotonic() - t0:.1f}s")
    server = keystone_server(venv, seed)
    try:
        server.start()
        ids = create_tenant(f"http://127.0.0.1:{server.port}/v3")
    finally:
        server.stop()
    (seed / "seed.json").write_text(json.dumps(ids, indent=2, sort_keys=True))
    for stale in ("keystone.log", "wsgi_keystone.py", "wsgi_service.py"):
        (seed / stale).unlink(missing_ok=True)
    shutil.rmtree(seed / "gunicorn-keystone", ignore_errors=True)


def create_tenant(keystone_url: str) -> dict[str, Any]:
    """Create the account, projects, users, roles and the service user by REST; return ids."""
    t0 = time.monotonic()
    auth = {"X-Auth-Token": admin_token(keystone_url)}

    def call(method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)):
        return _expect(http(method, keystone_url + path, body, auth), ok, f"{method} {path}").body

    def role_id(name: str) -> str:
        roles = call("GET", f"/roles?name={name}")["roles"]
        if roles:
            return str(roles[0]["id"])
        return str(call("POST", "/roles", {"role": {"name": name}})["role"]["id"])

    ids: dict[str, Any] = {"roles": {}, "projects": {}, "users": {}}
    for role in (C.MEMBER_ROLE, "service", "admin"):
        ids["roles"][role] = role_id(role)
    member = ids["roles"][C.MEMBER_ROLE]

    default_domain = call("GET", f"/domains?name={C.DEFAULT_DOMAIN}")["domains"][0]["id"]
    admin_id = call("GET", f"/users?name={C.ADMIN_USER}&domain_id={default_domain}")["users"][0][
        "id"
    ]
    ids["users"][C.ADMIN_USER] = admin_id
    # The admin and the service user must never get locked out by a test.
    never_lock = {"options": {"ignore_lockout_failure_attempts": True}}
    call("PATCH", f"/users/{admin_id}", {"user": never_lock})

    svc_project = call(
        "POST",
        "/projects",
        {"project": {"name": C.SERVICE_PROJECT, "domain_id": default_domain}},
    )["project"]["id"]
    svc_user = call(
        "POST",
        "/users",
        {
            "user": {
                "name": C.SERVICE_USER,
                "password": C.SERVICE_PASSWORD,
                "domain_id": default_domain,
                **never_lock,
            }
        },
    )["user"]["id"]
    call("PUT", f"/projects/{svc_project}/users/{svc_user}/roles/{ids['roles']['service']}")
    ids["service_project_id"] = svc_project
    ids["users"][C.SERVICE_USER] = svc_user

    domain_id = call("POST", "/domains", {"domain": {"name": C.ACCOUNT, "enabled": True}})[
        "domain"
    ]["id"]
    ids["domain_id"] = domain_id
    for project in C.PROJECTS:
        ids["projects"][project] = call(
            "POST", "/projects", {"project": {"name": project, "domain_id": domain_id}}
        )["project"]["id"]

    for name, (password, secret) in C.USERS.items():
        user: dict[str, Any] = {"name": name, "password": password, "domain_id": domain_id}
        if secret:
            user["options"] = {
                "multi_factor_auth_enabled": True,
                "multi_factor_auth_rules": [["password", "totp"]],
            }
        uid = call("POST", "/users", {"user": user})["user"]["id"]
        ids["users"][name] = uid
        if secret:
            call(
                "POST",
                "/credentials",
                {"credential": {"type": "totp", "user_id": uid, "blob": secret}},
            )
        projects = (C.PROJECT_ALPHA,) if name == C.LOCKME else C.PROJECTS
        for project in projects:
            call("PUT", f"/projects/{ids['projects'][project]}/users/{uid}/roles/{member}")
        if name != C.LOCKME:
            call("PUT", f"/domains/{domain_id}/users/{uid}/roles/{member}")

    endpoints = call("GET", "/endpoints?interface=public")["endpoints"]
    ids["identity_endpoint_ids"] = [e["id"] for e in endpoints]
    log(f"tenant created by REST in {time.monotonic() - t0:.1f}s")
    return ids


def ensure_seed(home: Path, venv: Path) -> Path:
    """Return the seed dir, building it once per seed key. Caller holds the lock."""
    name = f"seed-{seed_key()}"
    seed = home / name
    if (seed / _MARKER).is_file():
        return seed
    _prune(home, "seed-", name)
    tmp = home / f"{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(seed, ignore_errors=True)
    t0 = time.monotonic()
    log(f"building seed {seed}")
    try:
        _build_seed(venv, tmp)
        (tmp / _MARKER).write_text(seed_key() + "\n")
        tmp.rename(seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"seed ready in {time.monotonic() - t0:.1f}s")
    return seed


def ensure(home: Path | None = None) -> tuple[Path, Path]:
    """Idempotent setup: return (venv, seed), building what the cache lacks."""
    home = home or default_home()
    with _home_lock(home):
        venv = ensure_venv(home)
        seed = ensure_seed(home, venv)
    return venv, seed


# ---------------------------------------------------------------- a running tier


@dataclasses.dataclass
class KeystoneTier:
    """A running Keystone + protected service on loopback (what the pytest fixture yields)."""

    keystone_url: str  # http://127.0.0.1:PORT/v3
    auth_url: str  # .../v3/auth/tokens
    service_url: str  # http://127.0.0.1:PORT (no trailing slash)
    keystone_port: int
    service_port: int
    run_dir: Path
    home: Path
    ids: dict[str, Any]  # ids from seed.json: domain_id, projects{name: id}, users{name: id}
    service_log_path: Path
    keystone_log_path: Path
    # the constants, for convenience
    account: str = C.ACCOUNT
    project_alpha: str = C.PROJECT_ALPHA
    project_beta: str = C.PROJECT_BETA
    projects: tuple[str, ...] = C.PROJECTS
    carol: str = C.CAROL
    carol_password: str = C.CAROL_PASSWORD
    dave: str = C.DAVE
    dave_password: str = C.DAVE_PASSWORD
    dave_totp_secret: str = C.DAVE_TOTP_SECRET
    lockme: str = C.LOCKME
    lockme_password: str = C.LOCKME_PASSWORD
    erin: str = C.ERIN
    erin_password: str = C.ERIN_PASSWORD
    admin_user: str = C.ADMIN_USER
    admin_password: str = C.ADMIN_PASSWORD
    token_expiration_s: int = C.TOKEN_EXPIRATION_S
    lockout_failure_attempts: int = C.LOCKOUT_FAILURE_ATTEMPTS
    lockout_duration_s: int = C.LOCKOUT_DURATION_S
    _servers: list[Server] = dataclasses.field(default_factory=list, repr=False)

    @property
    def domain_id(self) -> str:
        return str(self.ids["domain_id"])

    def project_id(self, name: str) -> str:
        return str(self.ids["projects"][name])

    def user_id(self, name: str) -> str:
        return str(self.ids["users"][name])

    def admin_token(self) -> str:
        """A fresh system-scoped admin token (lives TOKEN_EXPIRATION_S seconds)."""
        return admin_token(self.keystone_url)

    def reset_lockout(self, user: str = C.LOCKME) -> None:
        """Clear the failed-login counter of `user` (Keystone has no API for it; no cache on)."""
        with contextlib.closing(sqlite3.connect(self.run_dir / "keystone.db", timeout=10)) as db:
            db.execute(
                "UPDATE local_user SET failed_auth_count = 0, failed_auth_at = NULL"
                " WHERE user_id = ?",
                (self.user_id(user),),
            )
            db.commit()

    def failed_logins(self, user: str = C.LOCKME) -> int:
        """Keystone's count of failed password logins of `user` since the last success/reset."""
        with contextlib.closing(sqlite3.connect(self.run_dir / "keystone.db", timeout=10)) as db:
            row = db.execute(
                "SELECT failed_auth_count FROM local_user WHERE user_id = ?",
                (self.user_id(user),),
            ).fetchone()
        return int(row[0] or 0) if row else 0

    def set_user_enabled(self, user: str, enabled: bool) -> None:
        """Disable or enable `user` by REST (disabling revokes all of the user's tokens)."""
        _expect(
            http(
                "PATCH",
                f"{self.keystone_url}/users/{self.user_id(user)}",
                {"user": {"enabled": enabled}},
                {"X-Auth-Token": self.admin_token()},
            ),
            (200,),
            f"set {user} enabled={enabled}",
        )

    def revocation_events(self) -> list[dict[str, Any]]:
        """Keystone's token revocation events (OS-REVOKE), oldest first."""
        reply = _expect(
            http(
                "GET",
                f"{self.keystone_url}/OS-REVOKE/events",
                headers={"X-Auth-Token": self.admin_token()},
            ),
            (200,),
            "list revocation events",
        )
        return list(reply.body["events"])

    def service_requests(self) -> list[dict[str, Any]]:
        """Every request the service got so far (not /health), oldest first."""
        try:
            text = self.service_log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def clear_service_log(self) -> None:
        self.service_log_path.write_text("")

    def log_tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {s.name} log ---\n{s.log_tail(chars)}" for s in self._servers)

    def stop(self, remove_run_dir: bool = True) -> None:
        """Stop both servers (and their workers); remove the run dir unless asked not to."""
        for server in reversed(self._servers):
            server.stop()
        if remove_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def start(home: Path | None = None, keep_run_dir: bool = False) -> KeystoneTier:
    """Set up (or reuse the cache), then start Keystone and the service on free ports."""
    home = home or default_home()
    venv, seed = ensure(home)
    run_dir = Path(tempfile.mkdtemp(prefix="zcpks-"))
    servers: list[Server] = []
    try:
        t0 = time.monotonic()
        for entry in ("keystone.db", "fernet-keys", "credential-keys", "seed.json"):
            src = seed / entry
            if src.is_dir():
                shutil.copytree(src, run_dir / entry)
            else:
                shutil.copy2(src, run_dir / entry)
        ids = json.loads((run_dir / "seed.json").read_text())
        _write_keystone_conf(run_dir)
        _copy_wsgi_modules(run_dir)

        keystone = keystone_server(venv, run_dir)
        servers.append(keystone)
        keystone.start()
        keystone_url = f"http://127.0.0.1:{keystone.port}/v3"
        token = admin_token(keystone_url)
        for endpoint_id in ids["identity_endpoint_ids"]:
            _expect(
                http(
                    "PATCH",
                    f"{keystone_url}/endpoints/{endpoint_id}",
                    {"endpoint": {"url": keystone_url}},
                    {"X-Auth-Token": token},
                ),
                (200,),
                "point the catalog at the new port",
            )

        (run_dir / "service.conf").write_text(service_conf(keystone_url))
        service_log = run_dir / "service-requests.jsonl"
        service_log.touch()
        service = Server(
            name="service",
            venv=venv,
            run_dir=run_dir,
            app="wsgi_service:application",
            env={
                "ZCP_SERVICE_CONF": str(run_dir / "service.conf"),
                "ZCP_SERVICE_LOG": str(service_log),
            },
            health_url_fmt="http://127.0.0.1:{port}/health",
            extra_args=("--worker-class", "gthread", "--threads", "4"),
        )
        servers.append(service)
        service.start()
        log(
            f"keystone on {keystone_url}, service on http://127.0.0.1:{service.port}"
            f" (started in {time.monotonic() - t0:.1f}s; run dir {run_dir})"
        )
        return KeystoneTier(
            keystone_url=keystone_url,
            auth_url=f"{keystone_url}/auth/tokens",
            service_url=f"http://127.0.0.1:{service.port}",
            keystone_port=keystone.port,
            service_port=service.port,
            run_dir=run_dir,
            home=home,
            ids=ids,
            service_log_path=service_log,
            keystone_log_path=keystone.log_path,
            _servers=servers,
        )
    except BaseException:
        for server in reversed(servers):
            server.stop()
        if not keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def smoke_test(running: KeystoneTier) -> None:
    """Log carol in with project scope and call the service once (raises TierError if not OK)."""
    body = {
        "auth": {
            "identity": password_auth(C.CAROL, C.CAROL_PASSWORD, C.ACCOUNT),
            "scope": {"project": {"domain": {"name": C.ACCOUNT}, "name": C.PROJECT_ALPHA}},
        }
    }
    reply = _expect(http("POST", running.auth_url + "?nocatalog", body), (201,), "carol login")
    token = reply.header("X-Subject-Token") or ""
    echo = _expect(
        http("GET", running.service_url + "/project/smoke", headers={"X-Auth-Token": token}),
        (200,),
        "service call",
    ).body
    if echo.get("project_name") != C.PROJECT_ALPHA or echo.get("user_name") != C.CAROL:
        raise TierError(f"unexpected echo from the service: {echo!r}")
