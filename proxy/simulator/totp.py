"""RFC 6238 TOTP checks (SHA1, 6 digits, 30 s, previous window too) with single use of codes."""

from __future__ import annotations

import hmac

import pyotp

STEP_SECONDS = 30


class TotpGuard:
    """Verifies passcodes and, unless `reuse` is set, accepts each (user, time-step) once."""

    def __init__(self, *, reuse: bool = False) -> None:
        self.reuse = reuse
        self._used: set[tuple[str, int]] = set()

    def verify(self, user_id: str, secret: str, passcode: object, now: float) -> bool:
        """True if `passcode` is the code of the current or previous step and not yet used."""
        if not isinstance(passcode, str) or not passcode.isdigit():
            return False
        totp = pyotp.TOTP(secret)
        current = int(now // STEP_SECONDS)
        for step in (current, current - 1):
            if hmac.compare_digest(totp.at(step * STEP_SECONDS), passcode):
                return self._use(user_id, step, current)
        return False

    def _use(self, user_id: str, step: int, current: int) -> bool:
        if not self.reuse and (user_id, step) in self._used:
            return False
        self._used = {(u, s) for u, s in self._used if s >= current - 1}
        self._used.add((user_id, step))
        return True
