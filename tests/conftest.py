"""Shared fixtures: the built-in simulator and the proxy, each a real server on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import simulator
from proxy.app import create_app, runner_options
from proxy.config import Config
from proxy.config_loader import load

SimulatorFactory = Callable[..., Awaitable[TestServer]]
ProxyFactory = Callable[..., Awaitable[TestServer]]


def base_url(server: TestServer) -> str:
    """`http://127.0.0.1:PORT` of a running test server."""
    return str(server.make_url("")).rstrip("/")


def proxy_config(upstream: str, *, env: Mapping[str, str] | None = None,
                 routes: tuple[str, ...] = (), **flags: Any) -> Config:
    """A real `config.load()` for the simulator's demo user, with overrides."""
    environ = {
        "ZCOMPUTE_URL": upstream,
        "ZCOMPUTE_USERNAME": simulator.ALICE,
        "ZCOMPUTE_ACCOUNT": simulator.DEFAULT_ACCOUNT,
        "ZCOMPUTE_PROJECT": simulator.DEV_PROJECT,
        "ZCOMPUTE_PASSWORD": simulator.ALICE_PASSWORD,
        "HOME": "/nonexistent",
    }
    environ.update(env or {})
    return load(environ={k: v for k, v in environ.items() if v is not None},
                flags=flags, routes=routes)


@pytest.fixture
async def start_simulator(aiohttp_server: Any) -> SimulatorFactory:
    """Start a simulator: `await start_simulator(token_ttl=5, mfa=True)`."""

    async def start(**options: Any) -> TestServer:
        server: TestServer = await aiohttp_server(
            simulator.create_app(simulator.SimulatorOptions(**options)))
        return server

    return start


def sim_state(server: TestServer) -> simulator.SimState:
    """The in-process state of a running simulator (counters, tokens)."""
    app: web.Application = server.app  # type: ignore[assignment]
    return app[simulator.SIM_STATE]


@pytest.fixture
async def start_proxy(aiohttp_server: Any) -> ProxyFactory:
    """Start the proxy for a `Config`: `await start_proxy(config)`."""

    async def start(config: Config, **app_options: Any) -> TestServer:
        server: TestServer = await aiohttp_server(create_app(config, **app_options),
                                                  **runner_options(config))
        return server

    return start
