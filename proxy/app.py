"""Composition root: the aiohttp application, its handlers and its lifecycle.

Everything with a lifetime (the session, token tasks) is created and closed in the
application's cleanup context, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web

from proxy import admin
from proxy.clock import Clock
from proxy.config import Config
from proxy.forward import Forwarder
from proxy.guard import Guard
from proxy.services import SERVICES, Services, build_services, mfa_notices
from proxy.tokens import TokenManager

TOKENS: Final = web.AppKey("tokens", TokenManager)
FORWARDER: Final = web.AppKey("forwarder", Forwarder)
SHUTDOWN_TIMEOUT: Final = 1.0  # after the drain (server.drain), for connections left idle


class InFlight:
    """How many forwarded requests are under way (for draining on SIGTERM)."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        """A request starts."""
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        """A request ends."""
        self.count -= 1
        if not self.count:
            self.idle.set()


IN_FLIGHT: Final = web.AppKey("in_flight", InFlight)

__all__ = ["IN_FLIGHT", "SERVICES", "Services", "create_app", "runner_options"]


def create_app(config: Config, *, clock: Clock | None = None,
               loader: Callable[[], Config] | None = None) -> web.Application:
    """The proxy application for `config`; `loader` re-reads the configuration on reload."""
    # A client that goes away cancels its handler, which stops the upstream exchange.
    app = web.Application(handler_args={"handler_cancellation": True})
    Guard.from_config(config).install(app)  # first: is this client allowed at all?
    in_flight = app[IN_FLIGHT] = InFlight()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = build_services(config, clock)
        services.loader = loader
        app[SERVICES], app[TOKENS] = services, services.tokens
        app[FORWARDER] = Forwarder(services.session, config.upstream.url, services.routes,
                                   services.tokens, config.tokens.replay_limit,
                                   config.max_header_size, services.metrics)
        notices = asyncio.create_task(mfa_notices(services), name="mfa-notices")
        yield
        notices.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await notices
        await services.close()

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(admin.PREFIX):  # reserved: never forwarded with a token
            return admin.not_found(request)
        in_flight.enter()
        try:
            return await request.app[FORWARDER].handle(request)
        finally:
            in_flight.leave()

    async def defer_expect(_request: web.Request) -> None:
        """100-continue is sent by the forwarder once a token is ready."""

    app.cleanup_ctx.append(lifecycle)
    admin.add_routes(app, SERVICES)
    app.router.add_route("*", "/{tail:.*}", forward, expect_handler=defer_expect)
    return app


def runner_options(config: Config) -> dict[str, object]:
    """Server settings: request bodies never decompressed; header lines are parsed up to twice
    `max_header_size` so the forwarder can answer a clear 431 above the limit itself."""
    return {"access_log": None, "auto_decompress": False,
            "shutdown_timeout": min(SHUTDOWN_TIMEOUT, config.drain_seconds),
            "max_line_size": config.max_header_size,
            "max_field_size": 2 * config.max_header_size}
