"""Where TOTP passcodes come from, and the rule that each 30-second code is used once."""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

import pyotp

from proxy.clock import Clock
from proxy.errors import MfaRequired
from proxy.secret import Secret

TOTP_STEP: Final = 30
MAX_STEP_WAIT: Final = TOTP_STEP + 2.0


class PasscodeSource(Protocol):
    """Gives a TOTP passcode for one login."""

    async def passcode(self) -> str:
        """A code from a time step not used before; may wait for the next step."""


class SecretPasscodes:
    """Computes codes from a stored base32 secret (RFC 6238: SHA1, 6 digits, 30 s).

    A server may reject a code it has already seen, so a second login within the same
    30-second step waits for the next step. Concurrent callers are served one at a time.
    """

    def __init__(self, secret: Secret, clock: Clock) -> None:
        self._totp = pyotp.TOTP(secret.reveal())
        self._clock = clock
        self._last_step = -1
        self._lock = asyncio.Lock()

    async def passcode(self) -> str:
        """The current code, or the next step's if the current one was used."""
        async with self._lock:
            now = self._clock.wall()
            step = int(now // TOTP_STEP)
            if step <= self._last_step:
                wait = (self._last_step + 1) * TOTP_STEP - now + 0.01
                if wait > MAX_STEP_WAIT:
                    raise MfaRequired("the TOTP clock went backwards; refusing to reuse a code")
                await asyncio.sleep(wait)
                step = self._last_step + 1
            self._last_step = step
            return str(self._totp.at(step * TOTP_STEP))
