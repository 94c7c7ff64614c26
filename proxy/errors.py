"""The errors zcompute-proxy raises on purpose, each mapped to the HTTP status a client sees.

    ProxyError                      500  root; never raised bare
    ├── ConfigError                 -    bad configuration; the CLI prints it and exits 2
    ├── BadRequest                  400  a request the proxy refuses to forward
    │   ├── MethodRefused           405  TRACE/TRACK: would echo the injected token back
    │   └── NoLoginWaiting          409  a TOTP code came while no login waits for one
    ├── IdentityError               502  identity answered something we cannot use
    │   ├── CredentialsRejected     502  wrong password/passcode, locked, expired: latched
    │   │   └── ProjectRefused      403  no such project, or no role in it (kept 60 s)
    │   ├── MfaRequired             503  a TOTP code is needed and none is available
    │   ├── RescopeRefused          502  identity would not re-scope a token (we fall back)
    │   └── IdentityUnavailable     503  identity unreachable, 5xx or 429: retry later
    └── UpstreamError               502  the zCompute endpoint failed
        └── UpstreamTimeout         504

Every message is safe to show a user: no password, token, TOTP secret or code ever goes in one.
"""

from __future__ import annotations

from typing import Any


class ProxyError(Exception):
    """Root of our errors; `status` is the HTTP status and `code` a stable machine name."""

    status: int = 500
    code: str = "proxy_error"

    def __init__(self, message: str, *, hint: str | None = None, scope: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.scope = scope
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        """The JSON body a client receives for this error."""
        body: dict[str, Any] = {"code": self.code, "status": self.status, "message": self.message}
        if self.scope is not None:
            body["scope"] = self.scope
        if self.hint is not None:
            body["hint"] = self.hint
        if self.retry_after is not None:
            body["retry_after"] = round(self.retry_after, 1)
        return {"error": body, "source": "zcompute-proxy"}


class ConfigError(ProxyError):
    """A configuration value is missing or wrong; the message names the key and the fix."""

    code = "config_error"


class BadRequest(ProxyError):
    """The client's request cannot be forwarded as it is."""

    status = 400
    code = "bad_request"


class MethodRefused(BadRequest):
    """A method the proxy never forwards."""

    status = 405
    code = "method_refused"


class NoLoginWaiting(BadRequest):
    """A TOTP code was given while no login waits for one; it is not kept."""

    status = 409
    code = "no_login_waiting"


class IdentityError(ProxyError):
    """The identity service answered something we cannot use."""

    status = 502
    code = "identity_error"


class CredentialsRejected(IdentityError):
    """Identity refused the credentials; no login is attempted again until they change."""

    code = "credentials_rejected"


class ProjectRefused(CredentialsRejected):
    """Identity will not give a token for this project: it does not exist or the user has no
    role in it. Remembered for a minute, per project; the account is not affected."""

    status = 403
    code = "project_refused"


class MfaRequired(IdentityError):
    """A TOTP code is required and none could be obtained."""

    status = 503
    code = "mfa_required"


class RescopeRefused(IdentityError):
    """Identity refused to re-scope a token with the `token` method."""

    code = "rescope_refused"

    def __init__(self, message: str, *, status_seen: int, scope: str | None = None) -> None:
        super().__init__(message, scope=scope)
        self.status_seen = status_seen


class IdentityUnavailable(IdentityError):
    """Identity is unreachable or overloaded; the caller may retry later."""

    status = 503
    code = "identity_unavailable"


class UpstreamError(ProxyError):
    """The zCompute endpoint could not be reached or broke off."""

    status = 502
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The zCompute endpoint did not answer in time."""

    status = 504
    code = "upstream_timeout"
