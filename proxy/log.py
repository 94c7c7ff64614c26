"""Logging: structlog, a readable console on a TTY and JSON otherwise, with secret redaction.

Secrets should never be passed to a log call; the redactor is the safety net behind that rule.
It replaces every registered secret (password, TOTP secret, recent tokens) found in any string
value of a log event by its fingerprint.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import sys
import threading
from collections import deque
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from proxy.secret import fingerprint

MAX_REMEMBERED_SECRETS: Final = 64
MAX_ERROR_TEXT: Final = 300
METHOD_LEVELS: Final = {"warn": "warning", "exception": "error"}  # as add_log_level names them
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
        """structlog processor: every string value (and exception) scrubbed. The string values
        are searched once, joined: most events hold no secret and cost one pass."""
        texts = []
        for key, value in event.items():
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, BaseException):
                event[key] = self.scrub(repr(value))
        joined = "\0".join(texts)
        if any(secret in joined for secret in self._secrets):
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = self.scrub(value)
        return event


class LineLogger:
    """structlog's output, one line per event. Lines logged in one step of a running event
    loop are written together at the end of that step, with one system call however many
    requests finished in it (PrintLogger costs two per line); elsewhere at once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        """Queue `message` as a line; write it at the end of this loop step or now."""
        with self._lock:
            self._pending.append(message)
            first = len(self._pending) == 1
        if first:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running in this thread
                self.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write the queued lines."""
        with self._lock:
            lines, self._pending = self._pending, []
        if lines:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()


def stamp(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: `level` and a UTC ISO `timestamp`, and `exc_info` formatted; what
    add_log_level, TimeStamper(fmt="iso", utc=True) and format_exc_info do, in one call."""
    event["level"] = METHOD_LEVELS.get(method, method)
    event["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if "exc_info" in event:
        return structlog.processors.format_exc_info(logger, method, event)
    return event


_JSON: Final = json.JSONEncoder(default=repr)  # json.dumps' output; built once, not per call


def render_json(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    """structlog renderer: the event as one JSON object (non-JSON values as their repr)."""
    return _JSON.encode(event)


class LibraryLogs(logging.Handler):
    """Records of the libraries we use (aiohttp, asyncio) as our own one-line log events.

    A malformed client request is named without a traceback (any local client can send one);
    other exceptions keep theirs, inside the event, so every line stays one JSON object.
    """

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        error = record.exc_info[1] if record.exc_info else None
        method = logging.getLevelName(record.levelno).lower()
        if isinstance(error, HttpProcessingError):  # the client's fault, not ours
            fields["error"] = f"{type(error).__name__}: {error.message}"[:MAX_ERROR_TEXT]
            method = "info"
        elif error is not None:
            fields["exc_info"] = record.exc_info
        getattr(structlog.get_logger(record.name), method, structlog.get_logger().error)(
            record.getMessage(), **fields)


REDACTOR: Final = Redactor()
_outputs: list[LineLogger] = []


def flush() -> None:
    """Write every log line still queued (when an event loop has finished, and at exit)."""
    for output in _outputs:
        with contextlib.suppress(ValueError, OSError):  # a stream closed already
            output.flush()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process."""
    stream = stream or sys.stderr
    output = LineLogger(stream)
    _outputs.append(output)
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console
                     else render_json)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            stamp,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_args: output,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [LibraryLogs()]
    root.setLevel(max(LEVELS[level], logging.WARNING))


atexit.register(flush)
