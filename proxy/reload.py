"""Apply a re-read configuration to a running proxy (SIGHUP, `zcompute-proxy reload`).

Routes and the default project change in place. New credentials (or any change to the
password or TOTP secret files) get a new identity client: cached tokens, latched failures and
backoffs are dropped, so the next request logs in with the new credentials. Settings bound at
start-up (listen address, upstream, TLS, timeouts) need a restart; the answer says which.
"""

from __future__ import annotations

import structlog

from proxy.config import Config
from proxy.services import Services, make_identity, route_table

log = structlog.get_logger("proxy.reload")

RESTART_FIELDS = ("listen", "upstream", "max_header_size", "drain_seconds", "tokens", "log",
                  "security")


def apply_config(services: Services, new: Config) -> list[str]:
    """Switch `services` to `new`; return a short list of what changed."""
    old = services.config
    changes: list[str] = []
    if (new.routes, new.default_project) != (old.routes, old.default_project):
        services.routes.adopt(route_table(new))
        changes.append("routes")
    if new.auth != old.auth:
        services.identity, services.passcodes = make_identity(new, services.session,
                                                              services.clock)
        services.tokens.replace_issuer(services.identity)
        changes.append("credentials: tokens dropped, next request logs in")
    changes += [f"{name} changed: restart to apply" for name in RESTART_FIELDS
                if getattr(new, name) != getattr(old, name)]
    services.config = new
    log.info("config_reloaded", changes=changes or ["nothing"])
    return changes
