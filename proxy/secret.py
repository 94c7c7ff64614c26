"""A wrapper that keeps secrets out of reprs, logs and error messages."""

from __future__ import annotations

import hashlib
from typing import Final

FINGERPRINT_LENGTH: Final = 8


def fingerprint(value: str) -> str:
    """A short, stable, non-reversible name for a secret value (sha256 prefix)."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"sha256:{digest[:FINGERPRINT_LENGTH]}"


class Secret:
    """A string that never shows itself: str() and repr() give a fingerprint, reveal() the value."""

    __slots__ = ("_fingerprint", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._fingerprint = fingerprint(value)

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """A short fingerprint, safe to log."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Secret({self._fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __bool__(self) -> bool:
        return bool(self._value)
