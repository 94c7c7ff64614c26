"""One-shot commands: print a token, explain the routes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from proxy.config import Config, parse_scope_spec
from proxy.errors import ConfigError, ProxyError
from proxy.prompt import for_one_shot
from proxy.scope import ACCOUNT, Scope, ScopeKind
from proxy.services import build_services, route_table


def requested_scope(spec: str, config: Config) -> Scope:
    """`account`, `project` (the default project) or `project:NAME` as a Scope."""
    parsed = parse_scope_spec(spec, "--scope")
    if isinstance(parsed, Scope):
        return parsed
    if parsed is ScopeKind.ACCOUNT:
        return ACCOUNT
    if parsed is ScopeKind.NONE:
        raise ConfigError("--scope none has no token; give account, project or project:NAME")
    if not config.default_project:
        raise ConfigError("--scope project needs a default project (ZCOMPUTE_PROJECT); or "
                          "give --scope project:NAME")
    return Scope(ScopeKind.PROJECT, config.default_project)


async def print_token(config: Config, spec: str, out: TextIO = sys.stdout) -> int:
    """Log in and write the token for `spec` to `out`: for scripts, never for logs."""
    scope = requested_scope(spec, config)
    services = build_services(config)
    prompt = for_one_shot(services.passcodes, sys.stdin, sys.stderr)
    try:
        token = await services.tokens.get(scope)
        out.write(token.value + "\n")
    finally:
        if prompt is not None:
            prompt.close()
        await services.close()
    return 0


def explain_routes(config: Config, method: str, paths: Sequence[str],
                   out: TextIO = sys.stdout) -> int:
    """Print the scope each path gets and the rule that decided it."""
    table = route_table(config)
    for path in paths:
        try:
            route = table.resolve(method, path)
        except ProxyError as exc:
            print(f"{method} {path}  ->  refused: {exc.message}", file=out)
            continue
        print(f"{method} {path}  ->  {route.scope}   (rule {route.rule}, {route.rule.source})",
              file=out)
    return 0
