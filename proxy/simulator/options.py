"""SimulatorOptions and the command-line flags that set them."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulator behaves; the defaults mimic a zCompute cluster (4 h tokens)."""

    token_ttl: float = 14400.0          # seconds a password-issued token lives
    mfa: bool = False                   # every built-in user requires password+totp
    users_file: Path | None = None      # TOML or JSON accounts file; built-in demo otherwise
    lockout_attempts: int = 0           # 0 = off; else lock after N consecutive failures
    lockout_seconds: float = 300.0
    reuse_totp: bool = False            # False: a (user, time-step) code is accepted once
    clock: Callable[[], float] = time.time  # wall clock, injectable for tests

    def __post_init__(self) -> None:
        if self.token_ttl <= 0 or self.lockout_attempts < 0 or self.lockout_seconds < 0:
            raise ValueError("token_ttl must be > 0; lockout_attempts and seconds >= 0")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (--token-ttl, --mfa, --users-file, --lockout, ...)."""
    group = parser.add_argument_group("simulator")
    group.add_argument("--token-ttl", type=_positive, default=14400.0, metavar="SECONDS",
                       help="lifetime of password-issued tokens (default: 14400 = 4 h)")
    group.add_argument("--mfa", action="store_true",
                       help="built-in user alice needs password+TOTP too (bob always does)")
    group.add_argument("--users-file", type=Path, default=None, metavar="PATH",
                       help="TOML or JSON file of accounts, projects and users")
    group.add_argument("--lockout", type=_count, default=0, metavar="N",
                       help="lock a user after N consecutive failed logins (default: off)")
    group.add_argument("--lockout-seconds", type=_positive, default=300.0, metavar="SECONDS",
                       help="how long a lockout lasts (default: 300)")
    group.add_argument("--reuse-totp", action="store_true",
                       help="accept the same TOTP code more than once (Keystone's behaviour)")


def options_from_args(ns: argparse.Namespace) -> SimulatorOptions:
    """The options the flags of `add_arguments` describe."""
    return SimulatorOptions(
        token_ttl=ns.token_ttl, mfa=ns.mfa, users_file=ns.users_file,
        lockout_attempts=ns.lockout, lockout_seconds=ns.lockout_seconds,
        reuse_totp=ns.reuse_totp,
    )
