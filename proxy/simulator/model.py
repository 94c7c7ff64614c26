"""Accounts (Keystone domains), their projects and users: the simulator's directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_ID_NAMESPACE = uuid.UUID("5f1c2a7e-7a3b-4f0e-9d0c-2b8e6c1d9a41")


def stable_id(*parts: str) -> str:
    """A Keystone-style 32-hex id that is the same on every run for the same names."""
    return uuid.uuid5(_ID_NAMESPACE, "/".join(parts)).hex


@dataclass(eq=False)
class Account:
    """A zCompute account, which Keystone calls a domain."""

    id: str
    name: str
    projects: list[Project] = field(default_factory=list)
    users: list[User] = field(default_factory=list)

    def project_named(self, name: str) -> Project | None:
        """The project of this account called `name`."""
        return next((p for p in self.projects if p.name == name), None)

    def user_named(self, name: str) -> User | None:
        """The user of this account called `name`."""
        return next((u for u in self.users if u.name == name), None)

    def ref(self) -> dict[str, str]:
        """The `{"id", "name"}` reference Keystone bodies use."""
        return {"id": self.id, "name": self.name}


@dataclass(eq=False)
class Project:
    """A project inside an account."""

    id: str
    name: str
    account: Account = field(repr=False)

    def ref(self) -> dict[str, Any]:
        """The project reference of a token body, with its domain."""
        return {"id": self.id, "name": self.name, "domain": self.account.ref()}


@dataclass(eq=False)
class User:
    """A user of one account; `password` changes through the control API."""

    id: str
    name: str
    password: str
    account: Account = field(repr=False)
    project_ids: frozenset[str] = frozenset()
    totp_secret: str | None = field(default=None, repr=False)
    mfa: bool = False

    def ref(self) -> dict[str, Any]:
        """The user object of a token body."""
        return {"id": self.id, "name": self.name, "domain": self.account.ref(),
                "password_expires_at": None}


class Directory:
    """Lookups over all accounts, by the references a Keystone request carries."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self.accounts = list(accounts)

    def account(self, *, name: str | None = None, account_id: str | None = None
                ) -> Account | None:
        """The account with this name or id."""
        return next((a for a in self.accounts if a.name == name or a.id == account_id), None)

    def project(self, project_id: str) -> Project | None:
        """The project with this id, in any account."""
        return next((p for a in self.accounts for p in a.projects if p.id == project_id), None)

    def user(self, user_id: str) -> User | None:
        """The user with this id, in any account."""
        return next((u for u in self.users() if u.id == user_id), None)

    def users(self) -> list[User]:
        """Every user of every account."""
        return [u for a in self.accounts for u in a.users]
