"""Everything a running simulator remembers, reachable from the app as `app[SIM_STATE]`."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.simulator.defaults import builtin_accounts
from proxy.simulator.lockout import Lockout
from proxy.simulator.model import Directory
from proxy.simulator.options import SimulatorOptions
from proxy.simulator.stats import Stats
from proxy.simulator.tokens import ReceiptStore, TokenStore
from proxy.simulator.totp import TotpGuard
from proxy.simulator.users_file import load_users_file
from proxy.simulator.vms import VmStore


@dataclass(eq=False)
class SimState:
    """Directory, tokens, receipts, TOTP and lockout bookkeeping, VMs, counters, outage."""

    options: SimulatorOptions
    directory: Directory
    tokens: TokenStore
    receipts: ReceiptStore
    totp: TotpGuard
    lockout: Lockout
    vms: VmStore
    stats: Stats
    outage_until: float = 0.0

    @classmethod
    def build(cls, options: SimulatorOptions) -> SimState:
        """Fresh state; reads the users file if one is set (UsersFileError if it is bad)."""
        accounts = (load_users_file(options.users_file) if options.users_file is not None
                    else builtin_accounts(mfa_for_all=options.mfa))
        directory = Directory(accounts)
        return cls(options=options, directory=directory, tokens=TokenStore(),
                   receipts=ReceiptStore(), totp=TotpGuard(reuse=options.reuse_totp),
                   lockout=Lockout(options.lockout_attempts, options.lockout_seconds),
                   vms=VmStore(directory, options.clock()), stats=Stats())

    def now(self) -> float:
        """The current time on the (possibly fake) clock."""
        return self.options.clock()

    def outage_remaining(self) -> float:
        """Seconds left in a simulated identity outage, 0 when there is none."""
        return max(0.0, self.outage_until - self.now())


SIM_STATE: web.AppKey[SimState] = web.AppKey("sim_state", SimState)
