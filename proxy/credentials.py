"""Where TOTP passcodes come from, and the rule that each 30-second code is used once."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from proxy.clock import Clock
from proxy.errors import BadRequest, MfaRequired, NoLoginWaiting
from proxy.secret import Secret
from proxy.totp import totp

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
        self._totp = totp(secret.reveal())
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


class HumanPasscodes:
    """Codes typed by a person (terminal, `zcompute-proxy totp CODE`, `POST /_proxy/totp`).

    A login that needs a code waits up to `wait` seconds for one. A code is accepted only
    while a login waits for it (nothing else may start a login with a guessed code), and the
    same code is never used twice.
    """

    def __init__(self, clock: Clock, *, wait: float, how_to: str) -> None:
        self._clock = clock
        self._wait = wait
        self._how_to = how_to
        self._pending: asyncio.Future[str] | None = None
        self._used: deque[str] = deque(maxlen=16)
        self.on_needed: list[Callable[[], None]] = []

    @property
    def how_to(self) -> str:
        """How a person can give a code."""
        return self._how_to

    @property
    def waiting(self) -> bool:
        """True while a login waits for a code."""
        return self._pending is not None and not self._pending.done()

    def configure(self, *, wait: float, how_to: str) -> None:
        """Change how long logins wait and what they tell the person (one-shot commands)."""
        self._wait, self._how_to = wait, how_to

    async def passcode(self) -> str:
        """The next code a person gives within `wait` seconds."""
        self._pending = asyncio.get_running_loop().create_future()
        for notify in self.on_needed:
            notify()
        try:
            code = await asyncio.wait_for(asyncio.shield(self._pending), self._wait)
        except TimeoutError:
            raise MfaRequired(f"a TOTP code is needed and none came within {self._wait:.0f} s",
                              hint=self._how_to) from None
        finally:
            self._pending = None
        self._used.append(code)
        return code

    def supply(self, code: str) -> None:
        """Give the waiting login `code`."""
        code = code.strip().replace(" ", "")
        if not code.isdigit() or not 6 <= len(code) <= 8:
            raise BadRequest("a TOTP code is 6 to 8 digits", hint=self._how_to)
        if code in self._used:
            raise BadRequest("that code was used already; wait for the next one",
                             hint=self._how_to)
        if self._pending is None or self._pending.done():
            raise NoLoginWaiting("no login is waiting for a TOTP code; the code was not used",
                                 hint="run `zcompute-proxy login` (or press 'Log in again' on "
                                      "the status page) to log in now; it then asks for a code")
        self._pending.set_result(code)
