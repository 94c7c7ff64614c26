"""What a token is scoped to: the account (Keystone domain), one project, or nothing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ScopeKind(StrEnum):
    """The three kinds of route scope."""

    ACCOUNT = "account"
    PROJECT = "project"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Scope:
    """A concrete token scope. Projects are named, or given by id as `id:<ID>`."""

    kind: ScopeKind
    project: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is ScopeKind.PROJECT) != bool(self.project):
            raise ValueError("a project scope needs a project name; other scopes take none")

    @property
    def project_id(self) -> str | None:
        """The project id when the project was given as `id:<ID>`."""
        if self.project and self.project.startswith("id:"):
            return self.project[3:]
        return None

    def __str__(self) -> str:
        return f"project:{self.project}" if self.project else self.kind.value


ACCOUNT = Scope(ScopeKind.ACCOUNT)
NO_TOKEN = Scope(ScopeKind.NONE)


def project(name: str) -> Scope:
    """The scope of project `name` (or `id:<ID>`)."""
    return Scope(ScopeKind.PROJECT, name)
