"""Command line: `zcompute-proxy [serve|simulate|demo|token|check|routes]`.

Our own errors print one `Error: ...` line and exit 2 (configuration) or 1 (a failed login or
check); nothing prints a traceback for an expected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from proxy import __version__, log
from proxy.config import Config, ListenAddress, parse_listen
from proxy.config_loader import load
from proxy.errors import ConfigError, ProxyError

DEFAULT_SIMULATOR_LISTEN: Final = "127.0.0.1:9090"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
LOOPS: Final = ("auto", "asyncio", "uvloop")

EPILOG: Final = """examples:
  zcompute-proxy demo                         # simulator + proxy, ready-to-paste curl lines
  ZCOMPUTE_URL=https://zc.example.com ZCOMPUTE_USERNAME=me ZCOMPUTE_ACCOUNT=acme \\
  ZCOMPUTE_PROJECT=dev ZCOMPUTE_PASSWORD_FILE=~/.zc-pass zcompute-proxy serve
  zcompute-proxy check                        # validate config, try each login
  zcompute-proxy token --scope project:dev    # print a token for a script
  zcompute-proxy routes /api/v2/compute/vms /api/v2/identity/users
"""


def _config_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that reads the proxy configuration."""
    group = parser.add_argument_group("configuration (flags > environment > file > defaults)")
    group.add_argument("--config", type=os.path.expanduser, metavar="FILE",
                       help="TOML file (default: ./zcompute-proxy.toml, "
                            "~/.config/zcompute-proxy/config.toml)")
    group.add_argument("--upstream", metavar="URL", help="zCompute base URL [ZCOMPUTE_URL]")
    group.add_argument("--identity-url", metavar="URL",
                       help="full identity URL [ZCOMPUTE_IDENTITY_URL] "
                            "(default: UPSTREAM/api/v2/identity/auth)")
    group.add_argument("--listen", metavar="HOST:PORT",
                       help="default 127.0.0.1:8080; or unix:/PATH (a 0600 unix socket) "
                            "[ZCOMPUTE_LISTEN]")
    group.add_argument("--username", help="[ZCOMPUTE_USERNAME]")
    group.add_argument("--account", help="account (Keystone domain) name [ZCOMPUTE_ACCOUNT]")
    group.add_argument("--project", help="default project [ZCOMPUTE_PROJECT]")
    group.add_argument("--mfa", choices=("auto", "combined", "receipt"),
                       help="how to send TOTP codes [ZCOMPUTE_MFA] (default auto)")
    group.add_argument("--ca-bundle", metavar="FILE",
                       help="CA bundle for the upstream's TLS [ZCOMPUTE_CA_BUNDLE]")
    group.add_argument("--insecure", action="store_const", const=True,
                       help="do not verify the upstream's TLS certificate (warns) "
                            "[ZCOMPUTE_INSECURE]")
    group.add_argument("--renew-margin", type=float, metavar="SECONDS",
                       help="never use a token with less than this left (default automatic) "
                            "[ZCOMPUTE_RENEW_MARGIN]")
    group.add_argument("--mfa-wait", type=float, metavar="SECONDS",
                       help="how long a request waits for a person to give a TOTP code "
                            "(default 60) [ZCOMPUTE_MFA_WAIT]")
    group.add_argument("--revoke-on-exit", action="store_const", const=True,
                       help="revoke our tokens when the proxy stops [ZCOMPUTE_REVOKE_ON_EXIT]")
    group.add_argument("--route", action="append", default=[], metavar="[METHOD ]PATTERN=SCOPE",
                       help="route rule, repeatable; SCOPE is account, project, project:NAME "
                            "or none; e.g. --route '/api/v2/foo/**=account'")
    group.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                       help="default info [ZCOMPUTE_LOG_LEVEL]")
    group.add_argument("--log-format", choices=("auto", "console", "json"),
                       help="auto: readable on a terminal, JSON otherwise [ZCOMPUTE_LOG_FORMAT]")
    _security_options(parser)


def _security_options(parser: argparse.ArgumentParser) -> None:
    """Who may use the proxy (see SECURITY.md)."""
    group = parser.add_argument_group("security (who may use the proxy; see SECURITY.md)")
    group.add_argument("--allow-host", action="append", metavar="NAME[:PORT]",
                       help="another Host name clients may use, repeatable "
                            "[ZCOMPUTE_ALLOWED_HOSTS]")
    group.add_argument("--allow-origin", action="append", metavar="SCHEME://HOST[:PORT]",
                       help="a web page origin allowed to call the proxy, repeatable "
                            "[ZCOMPUTE_ALLOWED_ORIGINS]")
    group.add_argument("--allow-peer", action="append", metavar="CIDR",
                       help="peer addresses allowed to connect, repeatable; replaces the "
                            "default (loopback) [ZCOMPUTE_ALLOWED_PEERS]")
    group.add_argument("--access-key-file", metavar="FILE",
                       help="clients must send Proxy-Authorization: Bearer <its content> "
                            "[ZCOMPUTE_ACCESS_KEY_FILE]")
    group.add_argument("--allow-remote", action="store_const", const=True,
                       help="allow a non-loopback --listen without an access key (warns) "
                            "[ZCOMPUTE_ALLOW_REMOTE]")


Command = Callable[[str, str, str], argparse.ArgumentParser]


def build_parser(running: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every command. Given the command `running`, the simulator's
    flags (which import aiohttp) are only added if it takes them: `--help` stays fast."""
    parser = argparse.ArgumentParser(
        prog="zcompute-proxy", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Local authenticating reverse proxy for the Zadara zCompute API: send "
                    "plain requests to it; it logs in, caches scoped tokens and injects them.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    _add_serve(command)
    _add_simulator_commands(command, running)
    _add_one_shot_commands(command)
    _add_control_commands(command)
    return parser


def _add_serve(command: Command) -> None:
    serve = command("serve", "run the proxy (the default command)",
                    "zcompute-proxy serve --upstream https://zc.example.com")
    _config_options(serve)
    serve.add_argument("--generate-access-key", metavar="FILE",
                       help="write a new random access key to FILE (mode 0600) and exit")
    serve.add_argument("--loop", choices=LOOPS, default=os.environ.get("ZCOMPUTE_LOOP", "auto"),
                       help="event loop [ZCOMPUTE_LOOP]: auto (the default) is uvloop when it "
                            "is installed (pip install 'zcompute-proxy[speed]'), else asyncio")


def _add_simulator_commands(command: Command, running: str | None) -> None:
    simulate = command("simulate", "run the built-in zCompute simulator",
                       "zcompute-proxy simulate --listen 127.0.0.1:9090 --mfa")
    demo = command("demo", "run the simulator and the proxy together, print curl lines",
                   "zcompute-proxy demo && curl http://127.0.0.1:8080/api/v2/compute/vms")
    for name, sub, default in (("simulate", simulate, DEFAULT_SIMULATOR_LISTEN),
                               ("demo", demo, "127.0.0.1:8080")):
        sub.add_argument("--listen", default=default, metavar="HOST:PORT",
                         help=f"default {default}")
        if running in (None, name):
            _simulator_arguments(sub)
    demo.add_argument("--simulator-listen", default=DEFAULT_SIMULATOR_LISTEN, metavar="HOST:PORT")


def _add_one_shot_commands(command: Command) -> None:
    token = command("token", "log in and print a token on stdout",
                    "curl -H \"X-Auth-Token: $(zcompute-proxy token)\" https://zc.example.com/...")
    token.add_argument("--scope", default="project", metavar="account|project[:NAME]",
                       help="default: the default project")
    _config_options(token)
    _config_options(command("check", "validate the configuration and try each login",
                            "zcompute-proxy check --config ~/.config/zcompute-proxy/config.toml"))
    routes = command("routes", "show which scope each path gets and which rule decides",
                     "zcompute-proxy routes --method POST /api/v2/compute/vms")
    routes.add_argument("paths", nargs="+", metavar="PATH")
    routes.add_argument("--method", default="GET", type=str.upper)
    _config_options(routes)


def _add_control_commands(command: Command) -> None:
    for name, help_text, example in (
            ("login", "tell the running proxy to clear failures and log in again now",
             "zcompute-proxy login"),
            ("reload", "tell the running proxy to re-read its configuration and secret files",
             "zcompute-proxy reload"),
            ("totp", "give the running proxy a TOTP code (when no TOTP secret is configured)",
             "zcompute-proxy totp 123456")):
        sub = command(name, help_text, example)
        if name == "totp":
            sub.add_argument("code", metavar="CODE",
                             help="the code from your authenticator (6 to 8 digits)")
        sub.add_argument("--proxy-url", metavar="URL",
                         help="the running proxy (default: http://LISTEN from the configuration)")
        _config_options(sub)


def _simulator_arguments(parser: argparse.ArgumentParser) -> None:
    from proxy import simulator  # noqa: PLC0415 - only the simulator commands need it

    simulator.add_arguments(parser)


def config_from_args(args: argparse.Namespace, *, need_auth: bool = True,
                     need_upstream: bool = True) -> Config:
    """Load the configuration named by the parsed flags."""
    flags = {
        "proxy.listen": args.listen, "upstream.url": args.upstream,
        "upstream.identity_url": args.identity_url, "upstream.ca_bundle": args.ca_bundle,
        "upstream.insecure": args.insecure, "auth.username": args.username,
        "auth.account": args.account, "auth.project": args.project, "auth.mfa": args.mfa,
        "tokens.renew_margin": args.renew_margin, "tokens.mfa_wait": args.mfa_wait,
        "tokens.revoke_on_exit": args.revoke_on_exit, "log.level": args.log_level,
        "log.format": args.log_format, "security.allowed_hosts": args.allow_host,
        "security.allowed_origins": args.allow_origin, "security.allowed_peers": args.allow_peer,
        "security.access_key_file": args.access_key_file,
        "security.allow_remote": args.allow_remote,
    }
    return load(config_file=Path(args.config) if args.config else None, flags=flags,
                routes=args.route, need_auth=need_auth, need_upstream=need_upstream)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `zcompute-proxy` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser(argv[0]).parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ProxyError as exc:
        print(f"Error: {exc.message}" + (f"\nHint: {exc.hint}" if exc.hint else ""),
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `zcompute-proxy check | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _run(coro: Coroutine[Any, Any, int],
         loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> int:
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    finally:
        log.flush()  # lines of the loop's last step, before anything else is printed


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for `uvloop`, and for `auto` when it is installed; None: asyncio's."""
    if choice not in LOOPS:
        raise ConfigError(f"ZCOMPUTE_LOOP must be one of {', '.join(LOOPS)}, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed "
                              "(pip install 'zcompute-proxy[speed]')") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve`: run the proxy until SIGINT/SIGTERM (or write a new access key and exit)."""
    if args.generate_access_key:
        from proxy.guard import write_access_key  # noqa: PLC0415

        path = Path(args.generate_access_key).expanduser()
        write_access_key(path)
        print(f"Wrote a new access key to {path} (mode 0600). Start the proxy with "
              f"ZCOMPUTE_ACCESS_KEY_FILE={path}; clients send the header "
              f"'Proxy-Authorization: Bearer KEY', KEY being the file's content.")
        return 0
    config = config_from_args(args)
    log.configure(config.log.level, config.log.format)
    from proxy.server import run_proxy  # noqa: PLC0415

    factory = event_loop_factory(args.loop)
    return _run(run_proxy(config, loader=lambda: config_from_args(args)), factory)


def cmd_simulate(args: argparse.Namespace) -> int:
    """`simulate`: run the simulator alone."""
    from proxy.server import run_simulator  # noqa: PLC0415

    log.configure("info", "auto")
    return _run(run_simulator(args, _listen(args.listen, "--listen")))


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: simulator and proxy in one process."""
    from proxy.server import run_demo  # noqa: PLC0415

    log.configure("info", "auto")
    return _run(run_demo(args, _listen(args.listen, "--listen"),
                         _listen(args.simulator_listen, "--simulator-listen")))


def cmd_token(args: argparse.Namespace) -> int:
    """`token`: print a token for the requested scope."""
    from proxy.oneshot import print_token  # noqa: PLC0415

    config = config_from_args(args)
    log.configure("warning", "console" if sys.stderr.isatty() else "json")
    return _run(print_token(config, args.scope))


def cmd_check(args: argparse.Namespace) -> int:
    """`check`: validate and try the logins."""
    from proxy.checklist import check  # noqa: PLC0415

    config = config_from_args(args)
    log.configure("error", "console" if sys.stderr.isatty() else "json")
    return _run(check(config))


def cmd_routes(args: argparse.Namespace) -> int:
    """`routes`: explain the routing of each path."""
    from proxy.oneshot import explain_routes  # noqa: PLC0415

    config = config_from_args(args, need_auth=False, need_upstream=False)
    return explain_routes(config, args.method, args.paths)


def cmd_control(args: argparse.Namespace) -> int:
    """`login`, `reload`, `totp CODE`: POST to the running proxy's admin endpoint."""
    from proxy.control import post_to_proxy  # noqa: PLC0415

    body = {"code": args.code} if args.command == "totp" else {}
    return post_to_proxy(config_from_args(args, need_auth=False, need_upstream=False),
                         args.command, body,
                         args.proxy_url)


def _listen(text: str, source: str) -> ListenAddress:
    return parse_listen(text, source)


COMMANDS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "serve": cmd_serve, "simulate": cmd_simulate, "demo": cmd_demo, "token": cmd_token,
    "check": cmd_check, "routes": cmd_routes, "login": cmd_control, "reload": cmd_control,
    "totp": cmd_control,
}
