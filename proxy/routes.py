"""Route table: (method, raw request target) → which token scope to inject, and the path to send.

Rules are tried in order, the user's before the built-in defaults; the first match decides.
A pattern is a path where `*` matches within one segment and `**` across segments; a trailing
`/**` also matches the bare prefix. Patterns match the raw (still percent-encoded) path with
unreserved characters decoded, so `/api/v2/%69dentity` is the same path as `/api/v2/identity`.
Matching never changes what is sent: the upstream receives the client's bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from proxy.config import RouteRule, parse_scope_spec
from proxy.errors import BadRequest, MethodRefused
from proxy.scope import ACCOUNT, NO_TOKEN, Scope, ScopeKind

EXPLORER_PREFIX: Final = "/api-explorer"
PROJECT_HEADER: Final = "X-Zcompute-Project"
REFUSED_METHODS: Final = frozenset({"TRACE", "TRACK"})
_UNRESERVED: Final = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|[46][1-9a-fA-F]|[57][0-9aA]|3[0-9])")
_DOT_SEGMENT: Final = re.compile(r"(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)")
_PROJECT_NAME: Final = re.compile(r"^[\w.:@+-]{1,255}$")
CACHE_SIZE: Final = 1024  # decisions remembered (cleared when full)
CACHED_TARGET_LENGTH: Final = 512  # longer targets are decided afresh each time

DEFAULT_RULES: Final = (
    RouteRule(pattern="/api/v2/aws/**", scope="none"),
    RouteRule(pattern="/api/v2/ec2/**", scope="none"),
    RouteRule(pattern="/api/v2/identity/**", scope="account"),
    RouteRule(pattern="/api/v2/quotas/limits/domains/**", scope="account"),
    RouteRule(pattern="/api/v2/cluster/**", scope="account"),
    RouteRule(pattern="/api/v2/nodes/**", scope="account"),
    RouteRule(pattern="/**", scope="project"),
)


@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one request: scope to inject, raw target to send, the deciding rule."""

    scope: Scope
    target: str
    rule: RouteRule


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: RouteRule
    regex: re.Pattern[str]
    scope: ScopeKind | Scope


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Turn a `*`/`**` path pattern into an anchored regex."""
    tail = ""
    if pattern.endswith("/**"):
        pattern, tail = pattern[:-3], "(?:/.*)?"
    parts = (".*" if p == "**" else re.escape(p) for p in re.split(r"(\*\*)", pattern))
    body = "".join(parts).replace(r"\*", "[^/]*")
    return re.compile(f"^{body}{tail}$", re.DOTALL)


def normalize_for_matching(raw_path: str) -> str:
    """Decode only unreserved percent-escapes (RFC 3986 §6.2.2.2) for rule matching."""
    return _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), raw_path) if "%" in raw_path \
        else raw_path


class RouteTable:
    """Ordered rules, compiled once; `resolve` is the per-request entry point."""

    def __init__(self, rules: Sequence[RouteRule], *, default_project: str | None,
                 identity_path: str | None = None) -> None:
        builtin = list(DEFAULT_RULES)
        if identity_path:
            builtin.insert(0, RouteRule(pattern=identity_path, scope="none",
                                        source="default (identity endpoint)"))
        self.rules: tuple[RouteRule, ...] = (*rules, *builtin)
        self._compiled = tuple(
            _CompiledRule(r, compile_pattern(r.pattern), parse_scope_spec(r.scope, r.source))
            for r in self.rules)
        self.default_project = default_project
        self._decided: dict[tuple[str, str, str | None], Route] = {}

    def adopt(self, other: RouteTable) -> None:
        """Take over the rules and default project of `other` (a configuration reload)."""
        self.rules, self._compiled = other.rules, other._compiled
        self.default_project = other.default_project
        self._decided = {}

    def resolve(self, method: str, raw_target: str, project_header: str | None = None) -> Route:
        """Pick the scope for a request; raise `BadRequest` for targets we refuse.

        The same request line and project header always get the same decision, so decisions
        for targets of a usual length are remembered."""
        key = (method, raw_target, project_header)
        route = self._decided.get(key)
        if route is None:
            route = self._decide(method, raw_target, project_header)
            if len(raw_target) <= CACHED_TARGET_LENGTH:
                if len(self._decided) >= CACHE_SIZE:
                    self._decided.clear()
                self._decided[key] = route
        return route

    def _decide(self, method: str, raw_target: str, project_header: str | None) -> Route:
        if method in REFUSED_METHODS:
            raise MethodRefused(f"{method} is not forwarded: the upstream would echo the "
                                "injected token back to the client")
        path, sep, query = raw_target.partition("?")
        if not path.startswith("/"):
            raise BadRequest("only origin-form request targets (/path) are accepted; "
                             "this proxy always talks to its configured upstream")
        if path.startswith(EXPLORER_PREFIX + "/api/"):
            path = path[len(EXPLORER_PREFIX):]
        if _DOT_SEGMENT.search(path):
            raise BadRequest("paths with '.' or '..' segments are refused; send the "
                             "resolved path instead")
        matched = self.match(method, path)
        scope = self._scope(matched.scope, project_header)
        return Route(scope=scope, target=f"{path}{sep}{query}", rule=matched.rule)

    def match(self, method: str, path: str) -> _CompiledRule:
        """The first rule that matches `method` and the raw `path`."""
        key = normalize_for_matching(path)
        for compiled in self._compiled:
            if compiled.rule.method in (None, method) and compiled.regex.match(key):
                return compiled
        raise AssertionError("the default rules end with a catch-all")  # pragma: no cover

    def _scope(self, spec: ScopeKind | Scope, project_header: str | None) -> Scope:
        if isinstance(spec, Scope):
            return spec
        if spec is ScopeKind.ACCOUNT:
            return ACCOUNT
        if spec is ScopeKind.NONE:
            return NO_TOKEN
        name = project_header.strip() if project_header else self.default_project
        if not name:
            raise BadRequest("this route needs a project token but no project is set",
                             hint=f"set ZCOMPUTE_PROJECT, or send the header {PROJECT_HEADER}")
        if not _PROJECT_NAME.match(name) or name == "id:":
            raise BadRequest(f"{PROJECT_HEADER} must be a project name or id:<ID>")
        return Scope(ScopeKind.PROJECT, name)
