"""Long-running commands: the proxy, the simulator, and both together for the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

from proxy.app import IN_FLIGHT, create_app, runner_options
from proxy.config import AuthConfig, Config, ListenAddress, UpstreamConfig
from proxy.credentials import HumanPasscodes
from proxy.errors import ConfigError
from proxy.prompt import TerminalPrompt
from proxy.reload import apply_config
from proxy.secret import Secret
from proxy.services import SERVICES, Services

log = structlog.get_logger("proxy.server")

DEMO_CURLS: Final = (
    "curl {base}/api/v2/compute/vms                          # project {project}",
    "curl -H 'X-Zcompute-Project: {other}' {base}/api/v2/compute/vms   # another project",
    "curl {base}/api/v2/identity/projects                    # account scope",
    "curl -X POST -H 'Content-Type: application/json' -d '{{\"name\": \"web-1\"}}' "
    "{base}/api/v2/compute/vms",
    "curl {base}/_proxy/status                               # cached tokens, no secrets",
)


async def start_proxy(config: Config,
                      loader: Callable[[], Config] | None = None) -> web.AppRunner:
    """Start the proxy on `config.listen`; the caller cleans the runner up."""
    app = create_app(config, loader=loader)
    runner = web.AppRunner(app, **runner_options(config))  # type: ignore[arg-type]
    await runner.setup()
    try:
        await listen_site(runner, config.listen).start()
    except (OSError, ConfigError) as exc:
        await runner.cleanup()
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--listen {config.listen}: cannot listen there ({exc.strerror}); "
                          "pick a free port or stop what uses it") from None
    listen = bound_address(runner, config.listen)
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    auth = config.auth
    log.info("proxy_listening", listen=listen_url(listen),
             upstream=str(config.upstream.url),
             account=auth.account if auth else None, project=config.default_project,
             access_key="required" if config.security.access_key else "not set",
             loop=loop_name(), try_it=try_it(config, listen))
    return runner


def bound_address(runner: web.AppRunner, listen: ListenAddress) -> ListenAddress:
    """Where the runner really listens (port 0 becomes the port the system chose)."""
    if listen.unix is not None or not runner.addresses:
        return listen
    host, port = runner.addresses[0][:2]
    return ListenAddress(host=str(host), port=int(port))


def loop_name() -> str:
    """`asyncio` or `uvloop`: the package of the running event loop."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def listen_url(listen: ListenAddress) -> str:
    """`http://HOST:PORT`, or `unix:/path` for a unix socket."""
    return str(listen) if listen.unix is not None else f"http://{listen}"


def try_it(config: Config, listen: ListenAddress) -> str:
    """A curl line for the banner (the access key is named, never shown)."""
    key = " -H \"Proxy-Authorization: Bearer $KEY\"" if config.security.access_key else ""
    if listen.unix is not None:
        return f"curl{key} --unix-socket {listen.unix} http://localhost/api/v2/compute/vms"
    return f"curl{key} http://{listen}/api/v2/compute/vms"


def listen_site(runner: web.AppRunner, listen: ListenAddress) -> web.BaseSite:
    """A TCP site, or a site on a unix socket that is 0600 from the moment it exists."""
    if listen.unix is None:
        return web.TCPSite(runner, listen.host, listen.port)
    return web.SockSite(runner, unix_socket(listen.unix))


def unix_socket(path: Path) -> socket.socket:
    """A unix socket bound at `path` with mode 0600 (a stale socket file is replaced)."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # the file is created by bind(): never readable by others
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--listen unix:{path}: cannot create the socket: "
                          f"{exc.strerror}") from None
    finally:
        os.umask(umask)
    os.chmod(path, 0o600)
    return sock


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"--listen unix:{path}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left behind by a process that died
            return
    raise ConfigError(f"--listen unix:{path}: another process is listening there")


def remove_unix_socket(listen: ListenAddress) -> None:
    """Delete the socket file of a unix listen address after the server stopped."""
    if listen.unix is not None:
        with contextlib.suppress(FileNotFoundError):
            listen.unix.unlink()


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_proxy(config: Config, loader: Callable[[], Config] | None = None) -> int:
    """`serve`: reload on SIGHUP; prompt for TOTP codes when attached to a terminal."""
    runner = await start_proxy(config, loader)
    gc.collect()
    gc.freeze()  # what start-up built lives as long as the process: the collector skips it
    services = runner.app[SERVICES]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, services)
    prompt = terminal_prompt(services)
    try:
        await wait_for_signal()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if prompt is not None:
            prompt.close()
        await drain(runner, services, config.drain_seconds)
        await runner.cleanup()
        remove_unix_socket(config.listen)
        log.info("stopped")
    return 0


async def drain(runner: web.AppRunner, services: Services, seconds: float) -> None:
    """Stop accepting connections, answer not-ready, and give requests in flight up to
    `seconds` to finish."""
    services.draining = True  # /_proxy/ready answers 503 to clients still connected
    in_flight = runner.app[IN_FLIGHT]
    log.info("draining", seconds=seconds, in_flight=in_flight.count)
    for site in list(runner.sites):
        await site.stop()
    try:
        await asyncio.wait_for(in_flight.idle.wait(), seconds)
    except TimeoutError:
        log.warning("drain_timeout", still_in_flight=in_flight.count)


def _reload_on_signal(services: Services) -> None:
    if services.loader is None:
        return
    try:
        apply_config(services, services.loader())
    except ConfigError as exc:
        log.error("reload_failed", error=exc.message, detail="kept the running configuration")


def terminal_prompt(services: Services) -> TerminalPrompt | None:
    """Read TOTP codes from the terminal when no secret is configured and stdin is a TTY."""
    if not isinstance(services.passcodes, HumanPasscodes) or not sys.stdin.isatty():
        return None
    return TerminalPrompt(services.passcodes, sys.stdin, sys.stderr)


async def start_simulator(args: argparse.Namespace, listen: ListenAddress) -> web.AppRunner:
    """Start the simulator with the options parsed from `args`."""
    from proxy import simulator  # noqa: PLC0415

    try:
        runner = await simulator.serve(simulator.options_from_args(args), listen.host,
                                       listen.port)
    except OSError as exc:
        raise ConfigError(f"simulator listen address {listen}: cannot listen there "
                          f"({exc.strerror}); pick a free port") from None
    log.info("simulator_listening", url=f"http://{listen}")
    return runner


async def run_simulator(args: argparse.Namespace, listen: ListenAddress) -> int:
    """`simulate`."""
    runner = await start_simulator(args, listen)
    try:
        await wait_for_signal()
    finally:
        await runner.cleanup()
    return 0


def demo_config(listen: ListenAddress, simulator_url: str, mfa: bool) -> Config:
    """A proxy configuration for the simulator's built-in demo user."""
    from yarl import URL  # noqa: PLC0415

    from proxy.simulator import defaults  # noqa: PLC0415

    base = URL(simulator_url)
    return Config(
        listen=listen,
        upstream=UpstreamConfig(url=base, identity_url=base / "api/v2/identity/auth"),
        auth=AuthConfig(username=defaults.ALICE, account=defaults.DEFAULT_ACCOUNT,
                        password=Secret(defaults.ALICE_PASSWORD),
                        totp_secret=Secret(defaults.DEFAULT_TOTP_SECRET) if mfa else None),
        routes=(),
        default_project=defaults.DEV_PROJECT,
    )


async def run_demo(args: argparse.Namespace, listen: ListenAddress,
                   simulator_listen: ListenAddress) -> int:
    """`demo`: simulator and proxy together, with curl lines to paste."""
    from proxy.simulator import defaults  # noqa: PLC0415

    sim = await start_simulator(args, simulator_listen)
    config = demo_config(listen, f"http://{simulator_listen}", bool(getattr(args, "mfa", False)))
    try:
        proxy = await start_proxy(config)
    except ConfigError:
        await sim.cleanup()
        raise
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, lambda: log.info("reload_ignored", detail="the demo has no "
                                        "configuration file to re-read"))
    base = f"http://{listen}"
    lines = [line.format(base=base, project=defaults.DEV_PROJECT, other=defaults.PROD_PROJECT)
             for line in DEMO_CURLS]
    print("\nzcompute-proxy demo is running (Ctrl-C to stop). Try:\n\n  "
          + "\n  ".join(lines) + "\n", file=sys.stdout, flush=True)
    try:
        await wait_for_signal()
    finally:
        await proxy.cleanup()
        remove_unix_socket(listen)
        await sim.cleanup()
    return 0
