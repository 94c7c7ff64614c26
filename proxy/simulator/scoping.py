"""Resolve the `auth.scope` of a token request and check the user may have it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.simulator.errors import SimError
from proxy.simulator.model import Account, Directory, Project, User


@dataclass(frozen=True)
class ScopeTarget:
    """What a new token will be scoped to: an account, or one of its projects."""

    account: Account
    project: Project | None = None


def resolve_scope(auth: dict[str, Any], directory: Directory) -> ScopeTarget | None:
    """The requested scope; None when the request has none (400 malformed, 401 unknown)."""
    scope = auth.get("scope")
    if scope is None:
        return None
    if not isinstance(scope, dict):
        raise SimError(400, "Invalid scope: expecting an object.")
    if "project" in scope:
        return _project_scope(scope["project"], directory)
    if "domain" in scope:
        return ScopeTarget(_account(scope["domain"], directory))
    raise SimError(400, "Only domain and project scopes are supported.")


def check_access(user: User, target: ScopeTarget) -> None:
    """401 unless `user` has a role on the target (own account; assigned projects)."""
    if target.project is not None and target.project.id not in user.project_ids:
        raise SimError(401, f"User {user.id} has no access to project {target.project.id}")
    if target.project is None and target.account is not user.account:
        raise SimError(401, f"User {user.id} has no access to domain {target.account.id}")


def _project_scope(ref: Any, directory: Directory) -> ScopeTarget:
    if not isinstance(ref, dict):
        raise SimError(400, "Invalid project scope: expecting an object.")
    if isinstance(ref.get("id"), str):
        project = directory.project(ref["id"])
        if project is None:
            raise SimError(401, f"Could not find project: {ref['id']}.")
        return ScopeTarget(project.account, project)
    name = ref.get("name")
    if not isinstance(name, str):
        raise SimError(400, "Expecting to find id or name in project.")
    if "domain" not in ref:
        raise SimError(400, "Expecting to find domain in project. The server could not comply "
                            "with the request since it is either malformed or otherwise "
                            "incorrect. The client is assumed to be in error.")
    account = _account(ref["domain"], directory)
    found = account.project_named(name)
    if found is None:
        raise SimError(401, f"Could not find project: {name}.")
    return ScopeTarget(account, found)


def _account(ref: Any, directory: Directory) -> Account:
    """The account a `{"id"}` or `{"name"}` domain reference names (401 if none)."""
    key = "id" if isinstance(ref, dict) and "id" in ref else "name"
    value = ref.get(key) if isinstance(ref, dict) else None
    if not isinstance(value, str):
        raise SimError(400, "Expecting to find id or name in domain.")
    account = (directory.account(account_id=value) if key == "id"
               else directory.account(name=value))
    if account is None:
        raise SimError(401, f"Could not find domain: {value}.")
    return account
