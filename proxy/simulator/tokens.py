"""Fernet-looking opaque tokens and MFA receipts, with their lifetimes and revocation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.simulator.model import Account, Project, User

RECEIPT_TTL = 300.0
ROLE_ADMIN = {"id": "f14f5bece1014f3d9d8b66a5b92295c5", "name": "admin"}
ROLE_MEMBER = {"id": "3c5a8a0e2f8b4d4f9b6e1c7d2a9f0e13", "name": "member"}
_PRUNE_EVERY = 256


def iso_utc(timestamp: float) -> str:
    """ISO-8601 UTC with microseconds and `Z`, as Keystone writes `expires_at`."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_secret_id(nbytes: int) -> str:
    """An opaque url-safe id that starts like a Fernet token (`gAAAAA`)."""
    return "gAAAAAB" + secrets.token_urlsafe(nbytes)


@dataclass(eq=False)
class Token:
    """An issued token: who, which scope, how it was obtained and how long it lives."""

    id: str
    user: User
    account: Account
    project: Project | None
    methods: tuple[str, ...]
    issued_at: float
    expires_at: float
    audit_ids: tuple[str, ...]
    revoked: bool = False

    def valid(self, now: float) -> bool:
        """Neither revoked nor expired at `now`."""
        return not self.revoked and now < self.expires_at

    @property
    def scope_label(self) -> str:
        """`project:<name>` or `account:<name>`, as used in stats and headers."""
        if self.project is not None:
            return f"project:{self.project.name}"
        return f"account:{self.account.name}"

    def body(self) -> dict[str, Any]:
        """The `{"token": {...}}` body Keystone returns for this token."""
        token: dict[str, Any] = {
            "methods": list(self.methods), "expires_at": iso_utc(self.expires_at),
            "issued_at": iso_utc(self.issued_at), "is_domain": False,
            "roles": [dict(ROLE_MEMBER if self.project else ROLE_ADMIN)],
            "user": self.user.ref(), "audit_ids": list(self.audit_ids),
        }
        if self.project is not None:
            token["project"] = self.project.ref()
        else:
            token["domain"] = self.account.ref()
        return {"token": token}


class TokenStore:
    """Every token issued since start (expired ones are pruned now and then)."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._issued = 0

    def issue(self, user: User, account: Account, project: Project | None,
              methods: tuple[str, ...], *, now: float, expires_at: float,
              parent: Token | None = None) -> Token:
        """A new token for `user`; with `parent`, its audit chain continues the parent's."""
        audit = (secrets.token_urlsafe(16),) + ((parent.audit_ids[-1],) if parent else ())
        token = Token(id=new_secret_id(130), user=user, account=account, project=project,
                      methods=methods, issued_at=now, expires_at=expires_at, audit_ids=audit)
        self._issued += 1
        if self._issued % _PRUNE_EVERY == 0:
            self._tokens = {k: t for k, t in self._tokens.items() if t.valid(now)}
        self._tokens[token.id] = token
        return token

    def get(self, token_id: str | None, now: float) -> Token | None:
        """The token with this id if it is still valid at `now`."""
        token = self._tokens.get(token_id or "")
        return token if token is not None and token.valid(now) else None

    def revoke(self, token: Token) -> None:
        """Revoke one token."""
        token.revoked = True

    def revoke_all(self, user: User | None = None) -> int:
        """Revoke every unrevoked token (of `user` only, if given); returns how many."""
        hits = [t for t in self._tokens.values()
                if not t.revoked and (user is None or t.user is user)]
        for token in hits:
            token.revoked = True
        return len(hits)


@dataclass(eq=False)
class Receipt:
    """Proof that some MFA factors already passed; lives RECEIPT_TTL seconds."""

    id: str
    user: User
    methods: tuple[str, ...]
    issued_at: float
    expires_at: float

    def body(self, required: list[list[str]]) -> dict[str, Any]:
        """The 401 body Keystone sends with the `Openstack-Auth-Receipt` header."""
        return {"receipt": {"methods": list(self.methods), "user": self.user.ref(),
                            "issued_at": iso_utc(self.issued_at),
                            "expires_at": iso_utc(self.expires_at)},
                "required_auth_methods": required}


class ReceiptStore:
    """Receipts issued to MFA users after a partial login."""

    def __init__(self) -> None:
        self._receipts: dict[str, Receipt] = {}

    def issue(self, user: User, methods: tuple[str, ...], now: float) -> Receipt:
        """A new receipt for the factors in `methods`."""
        self._receipts = {k: r for k, r in self._receipts.items() if now < r.expires_at}
        receipt = Receipt(id=new_secret_id(100), user=user, methods=methods, issued_at=now,
                          expires_at=now + RECEIPT_TTL)
        self._receipts[receipt.id] = receipt
        return receipt

    def get(self, receipt_id: str, now: float) -> Receipt | None:
        """The receipt with this id if it has not expired."""
        receipt = self._receipts.get(receipt_id)
        return receipt if receipt is not None and now < receipt.expires_at else None
