"""TOTP codes (RFC 6238: SHA1, 6 digits, 30 s) from a base32 secret.

pyotp refuses secrets under 112 bits, but many authenticators were set up with 80-bit
(16-character) secrets, which RFC 4226 allows as a minimum (128 bits recommended). We accept
those too; anything shorter is refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import pyotp

MIN_SECRET_BYTES: Final = 10  # 80 bits: RFC 4226 §4 R6


class _Totp(pyotp.TOTP):
    """pyotp's TOTP with RFC 4226's 80-bit minimum instead of pyotp's 112 bits."""

    def byte_secret(self) -> bytes:
        secret = self.secret.upper()
        return base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)


def totp(secret: str) -> pyotp.TOTP:
    """A TOTP generator; ValueError for text that is not base32 of at least 80 bits."""
    generator = _Totp(secret)
    try:
        key = generator.byte_secret()
    except binascii.Error as exc:
        raise ValueError("not base32") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError("shorter than 80 bits")
    return generator
