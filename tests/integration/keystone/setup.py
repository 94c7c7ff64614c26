"""Set up (idempotently, cached) the local Keystone tier; optionally run it in the foreground.

Run with the system Python (stdlib only here; Keystone runs from its own cached venv):

    python3 tests/integration/keystone/setup.py            # build/reuse venv + seed, then exit
    python3 tests/integration/keystone/setup.py --serve    # also start both servers, until ^C
    python3 tests/integration/keystone/setup.py --check    # start, smoke-test, stop

The cache dir is $ZCP_KEYSTONE_HOME (default ~/.cache/zcompute-proxy/keystone).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: import this directory as the package it is (PEP 366).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "integration.keystone"
    import integration.keystone  # noqa: F401

from . import tier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="cache dir")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--serve", action="store_true", help="run the tier until interrupted")
    group.add_argument("--check", action="store_true", help="start, smoke-test and stop")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    try:
        venv, seed = tier.ensure(args.home)
    except tier.TierError as exc:
        print(f"keystone tier setup FAILED: {exc}", file=sys.stderr)
        return 1
    tier.log(f"setup done in {time.monotonic() - t0:.1f}s (venv {venv}, seed {seed})")
    if not (args.serve or args.check):
        return 0

    try:
        running = tier.start(args.home)
    except tier.TierError as exc:
        print(f"keystone tier start FAILED: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"keystone_url={running.keystone_url}")
        print(f"auth_url={running.auth_url}")
        print(f"service_url={running.service_url}")
        print(f"run_dir={running.run_dir}", flush=True)
        if args.check:
            tier.smoke_test(running)
            tier.log(f"check passed; total {time.monotonic() - t0:.1f}s")
            return 0
        stop = False

        def on_signal(_signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop:
            time.sleep(0.5)
        return 0
    except tier.TierError as exc:
        print(f"keystone tier check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        running.stop()


if __name__ == "__main__":
    raise SystemExit(main())
