"""Load accounts, projects and users from a TOML or JSON users file (format: package docs)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pyotp

from proxy.simulator.model import Account, Project, User, stable_id


class UsersFileError(ValueError):
    """The users file cannot be read or does not follow the documented format."""


def load_users_file(path: Path) -> list[Account]:
    """Read `path` (`.json` is JSON, anything else TOML) into accounts."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise UsersFileError(f"{path}: {exc}") from exc
    try:
        return parse_accounts(data)
    except UsersFileError as exc:
        raise UsersFileError(f"{path}: {exc}") from None


def parse_accounts(data: Any) -> list[Account]:
    """Build accounts from the decoded file; raises UsersFileError naming the bad entry."""
    tables = _list(data if isinstance(data, dict) else {}, "accounts", "file")
    if not tables:
        raise UsersFileError("no [[accounts]] defined")
    accounts = [_account(table, f"accounts[{i}]") for i, table in enumerate(tables)]
    _unique([a.name for a in accounts], "account name")
    ids = [a.id for a in accounts] + [p.id for a in accounts for p in a.projects]
    _unique(ids + [u.id for a in accounts for u in a.users], "id")
    return accounts


def _account(table: Any, where: str) -> Account:
    _table(table, where)
    name = _str(table, "name", where)
    account = Account(id=_str(table, "id", where, stable_id("account", name)), name=name)
    for i, entry in enumerate(_list(table, "projects", where)):
        pname = _str(entry, "name", f"{where}.projects[{i}]")
        pid = _str(entry, "id", f"{where}.projects[{i}]", stable_id("project", name, pname))
        account.projects.append(Project(id=pid, name=pname, account=account))
    _unique([p.name for p in account.projects], f"project name in {where}")
    for i, entry in enumerate(_list(table, "users", where)):
        account.users.append(_user(entry, account, f"{where}.users[{i}]"))
    _unique([u.name for u in account.users], f"user name in {where}")
    return account


def _user(table: Any, account: Account, where: str) -> User:
    _table(table, where)
    name = _str(table, "name", where)
    secret = table.get("totp_secret")
    if secret is not None:
        secret = _totp_secret(secret, where)
    mfa = table.get("mfa", False)
    if not isinstance(mfa, bool) or (mfa and secret is None):
        raise UsersFileError(f"{where}: 'mfa' must be true or false, and true needs totp_secret")
    names = table.get("projects", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsersFileError(f"{where}: 'projects' must be a list of project names")
    project_ids = set()
    for pname in names:
        project = account.project_named(pname)
        if project is None:
            raise UsersFileError(f"{where}: unknown project {pname!r} in account {account.name!r}")
        project_ids.add(project.id)
    return User(id=_str(table, "id", where, stable_id("user", account.name, name)), name=name,
                password=_str(table, "password", where), account=account,
                project_ids=frozenset(project_ids), totp_secret=secret, mfa=mfa)


def _totp_secret(value: Any, where: str) -> str:
    try:
        if not isinstance(value, str):
            raise TypeError
        pyotp.TOTP(value).at(0)
    except (TypeError, ValueError) as exc:
        raise UsersFileError(f"{where}: 'totp_secret' must be base32 of at least 112 bits") from exc
    return value


def _table(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise UsersFileError(f"{where}: must be a table (object)")


def _str(table: Any, key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default) if isinstance(table, dict) else None
    if not isinstance(value, str) or not value:
        raise UsersFileError(f"{where}: {key!r} must be a non-empty string")
    return value


def _list(table: dict[str, Any], key: str, where: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise UsersFileError(f"{where}: {key!r} must be a list of tables")
    return value


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise UsersFileError(f"duplicate {what}: {value!r}")
        seen.add(value)
