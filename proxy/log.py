"""Logging: structlog, a readable console on a TTY and JSON otherwise, with secret redaction.

Secrets should never be passed to a log call; the redactor is the safety net behind that rule.
It replaces every registered secret (password, TOTP secret, recent tokens) found in any string
value of a log event by its fingerprint.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from proxy.secret import fingerprint

MAX_REMEMBERED_SECRETS: Final = 64
LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                 "error": logging.ERROR}


class Redactor:
    """Remembers secret values and scrubs them from text."""

    def __init__(self) -> None:
        self._secrets: deque[str] = deque(maxlen=MAX_REMEMBERED_SECRETS)

    def add(self, value: str | None) -> None:
        """Remember `value` as a secret (values shorter than 4 characters are ignored)."""
        if value and len(value) >= 4 and value not in self._secrets:
            self._secrets.append(value)

    def scrub(self, text: str) -> str:
        """`text` with every remembered secret replaced by its fingerprint."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, f"<{fingerprint(secret)}>")
        return text

    def __call__(self, _logger: Any, _method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """structlog processor."""
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif isinstance(value, BaseException):
                event[key] = self.scrub(repr(value))
        return event


REDACTOR: Final = Redactor()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=stream,
                        format="%(levelname)s %(name)s: %(message)s")
