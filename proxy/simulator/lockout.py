"""Account lockout after N consecutive failed logins, like Keystone's security_compliance."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0


class Lockout:
    """Counts failed password/TOTP checks per user; `attempts` = 0 turns lockout off."""

    def __init__(self, attempts: int, seconds: float) -> None:
        self.attempts = attempts
        self.seconds = seconds
        self._records: dict[str, _Record] = {}

    def locked(self, user_id: str, now: float) -> bool:
        """True while the user is locked; an elapsed lock is cleared."""
        record = self._records.get(user_id)
        if record is None or record.locked_until == 0.0:
            return False
        if now < record.locked_until:
            return True
        del self._records[user_id]
        return False

    def failed(self, user_id: str, now: float) -> None:
        """Record one failure; the N-th consecutive one locks the user."""
        if self.attempts <= 0:
            return
        record = self._records.setdefault(user_id, _Record())
        record.failures += 1
        if record.failures >= self.attempts:
            record.locked_until = now + self.seconds

    def succeeded(self, user_id: str) -> None:
        """A successful login resets the count."""
        self._records.pop(user_id, None)
