"""Assemble the simulator's aiohttp application and serve it."""

from __future__ import annotations

from aiohttp import web

from proxy.simulator import control, identity, resources
from proxy.simulator.errors import SimError
from proxy.simulator.options import SimulatorOptions
from proxy.simulator.resources import Handler, count_resources
from proxy.simulator.state import SIM_STATE, SimState


@web.middleware
async def sim_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn a raised SimError into its Keystone-shaped JSON response."""
    try:
        return await handler(request)
    except SimError as exc:
        return exc.response(request)


def create_app(options: SimulatorOptions) -> web.Application:
    """A simulator app with fresh state (raises UsersFileError for a bad users file)."""
    app = web.Application(middlewares=[count_resources, sim_errors])
    app[SIM_STATE] = SimState.build(options)
    identity.add_routes(app.router)
    control.add_routes(app.router)
    resources.add_routes(app.router)
    return app


async def serve(options: SimulatorOptions, host: str, port: int) -> web.AppRunner:
    """Start the simulator on host:port (0 = any free port; see `runner.addresses`).

    Returns the started runner; the caller awaits `runner.cleanup()` when done.
    """
    runner = web.AppRunner(create_app(options))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
