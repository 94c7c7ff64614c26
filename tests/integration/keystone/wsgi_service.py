"""Gunicorn entry for the protected service (runs inside the tier's venv, not the test process).

A tiny WSGI app behind the real `keystonemiddleware.auth_token`:

- `/health`: 200 `{"status": "ok"}` without auth (served before the middleware).
- anything else needs a valid token (the middleware answers 401 for a missing, invalid or
  expired one, with `WWW-Authenticate: Keystone uri=...`);
- `/account/...` needs a domain-scoped token, `/project/...` a project-scoped one (403 JSON
  otherwise); any other path takes any valid token;
- every 200 echoes JSON of what the service saw (from the X-* headers the middleware sets):
  `path, method, project_name, project_id, domain_name, domain_id, user_name, user_id, roles,
  scope ("project"|"domain"|"system"|"unscoped"), token_expires`, plus `query`, `body`.

Every request but /health (also the ones the middleware rejects) is appended as one JSON line
to the file named by ZCP_SERVICE_LOG: `ts, method, path, query, status, token_sha256` (first 16
hex chars, or null), `headers` (incoming; X-Auth-Token replaced by its fingerprint) and what the
middleware established: `user_name, project_name, scope` (null when it rejected the token).

Config: ZCP_SERVICE_CONF names an oslo.config file with a [keystone_authtoken] section.
"""

import hashlib
import json
import os
import sys
import threading
import time

sys.argv = sys.argv[:1]  # oslo.config must not see gunicorn's options

from keystonemiddleware import auth_token  # noqa: E402

_LOG_PATH = os.environ.get("ZCP_SERVICE_LOG", "")
_LOG_LOCK = threading.Lock()
_MAX_ECHO_BODY = 64 * 1024


def _fingerprint(token):
    if not token:
        return None
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16]


def _json_response(start_response, status, payload, extra_headers=()):
    body = json.dumps(payload, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers.extend(extra_headers)
    start_response(status, headers)
    return [body]


def _header(environ, name):
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if value not in ("", "None") else None


def _scope_of(environ):
    if _header(environ, "X-Project-Id"):
        return "project"
    if _header(environ, "X-Domain-Id"):
        return "domain"
    if environ.get("HTTP_OPENSTACK_SYSTEM_SCOPE"):
        return "system"
    return "unscoped"


def _read_body(environ):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return ""
    data = environ["wsgi.input"].read(min(length, _MAX_ECHO_BODY))
    return data.decode("utf-8", "replace")


def protected_app(environ, start_response):
    """The app the middleware protects: enforce scope by path prefix, echo what it saw."""
    path = environ.get("PATH_INFO", "")
    scope = _scope_of(environ)
    needed = None
    if path == "/account" or path.startswith("/account/"):
        needed = "domain"
    elif path == "/project" or path.startswith("/project/"):
        needed = "project"
    if needed is not None and scope != needed:
        return _json_response(
            start_response,
            "403 Forbidden",
            {
                "error": {
                    "code": 403,
                    "title": "Forbidden",
                    "message": f"{path} needs a {needed}-scoped token, got {scope}",
                }
            },
        )
    token_info = environ.get("keystone.token_info") or {}
    token = token_info.get("token", {}) if isinstance(token_info, dict) else {}
    roles = _header(environ, "X-Roles")
    echo = {
        "path": path,
        "method": environ.get("REQUEST_METHOD"),
        "query": environ.get("QUERY_STRING", ""),
        "body": _read_body(environ),
        "project_name": _header(environ, "X-Project-Name"),
        "project_id": _header(environ, "X-Project-Id"),
        "domain_name": _header(environ, "X-Domain-Name")
        or _header(environ, "X-Project-Domain-Name"),
        "domain_id": _header(environ, "X-Domain-Id") or _header(environ, "X-Project-Domain-Id"),
        "user_name": _header(environ, "X-User-Name"),
        "user_id": _header(environ, "X-User-Id"),
        "roles": sorted(r for r in roles.split(",") if r) if roles else [],
        "scope": scope,
        "token_expires": token.get("expires_at"),
    }
    return _json_response(start_response, "200 OK", echo)


class RequestLog:
    """Outermost WSGI layer: record every request with the status it got."""

    def __init__(self, app, path):
        self._app = app
        self._path = path

    def __call__(self, environ, start_response):
        incoming = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                incoming[key[5:].replace("_", "-").title()] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                incoming[key.replace("_", "-").title()] = value
        token = incoming.pop("X-Auth-Token", None)
        if token is not None:
            incoming["X-Auth-Token"] = "sha256:" + (_fingerprint(token) or "")
        record = {
            "ts": time.time(),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "token_sha256": _fingerprint(token),
            "headers": incoming,
            "status": None,
        }

        def logging_start_response(status, headers, exc_info=None):
            record["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            return self._app(environ, logging_start_response)
        finally:
            # What the middleware established (it strips these from incoming requests first).
            record["user_name"] = _header(environ, "X-User-Name")
            record["project_name"] = _header(environ, "X-Project-Name")
            record["scope"] = _scope_of(environ) if record["user_name"] else None
            if self._path:
                line = json.dumps(record, sort_keys=True) + "\n"
                with _LOG_LOCK, open(self._path, "a", encoding="utf-8") as fh:
                    fh.write(line)


class HealthThenAuth:
    """Serve /health without auth (and unlogged); hand everything else on."""

    def __init__(self, protected):
        self._protected = protected

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/health":
            return _json_response(start_response, "200 OK", {"status": "ok"})
        return self._protected(environ, start_response)


def build_application():
    conf_file = os.environ["ZCP_SERVICE_CONF"]
    protected = auth_token.AuthProtocol(
        protected_app,
        {"oslo_config_project": "zcp-service", "oslo_config_file": conf_file},
    )
    return HealthThenAuth(RequestLog(protected, _LOG_PATH))


application = build_application()
