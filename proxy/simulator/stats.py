"""Request counters for tests and demos; they hold counts only, never a token."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

IDENTITY_KEYS = (
    "requests",         # every request to an identity endpoint (POST, GET, DELETE)
    "password",         # POST logins using the password method, incl. password+totp
    "totp_receipt",     # POST logins finishing an MFA login with TOTP + receipt header
    "token",            # POST re-scopes with the token method
    "issued",           # tokens issued (201)
    "receipts",         # MFA receipts issued (401 + Openstack-Auth-Receipt)
    "failures",         # POST answered 400/401/404 without a receipt
    "outage",           # requests answered 503 during a simulated outage
    "auto_enable_mfa",  # POST bodies carrying auth.auto_enable_mfa (always ignored)
    "validations",      # GET token validations
    "revocations",      # DELETE token revocations
)


class Stats:
    """Identity counters by kind, tokens issued per scope, resource requests by status."""

    def __init__(self) -> None:
        self.identity: Counter[str] = Counter()
        self.scopes: Counter[str] = Counter()
        self.resource_status: Counter[int] = Counter()
        self._token_digests: set[str] = set()

    def resource(self, status: int, token: str | None) -> None:
        """Count one resource request and remember a digest of the token it used."""
        self.resource_status[status] += 1
        if token:
            self._token_digests.add(hashlib.sha256(token.encode()).hexdigest())

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.identity.clear()
        self.scopes.clear()
        self.resource_status.clear()
        self._token_digests.clear()

    def snapshot(self) -> dict[str, Any]:
        """The JSON document served at `GET /_sim/stats`."""
        return {
            "identity": {key: self.identity[key] for key in IDENTITY_KEYS},
            "scopes": dict(sorted(self.scopes.items())),
            "resources": {
                "requests": sum(self.resource_status.values()),
                "by_status": {str(k): v for k, v in sorted(self.resource_status.items())},
                "distinct_tokens": len(self._token_digests),
            },
        }
