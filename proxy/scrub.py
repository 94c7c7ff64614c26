"""Secrets echoed in small upstream error bodies are replaced before the client sees them.

An upstream may echo what it received, for instance the token we injected, in a 400 or 401
body. The forwarder streams bodies and must never hold a large one, so only this is
inspected: an error status (400 and above) with a Content-Length of at most 64 KiB, no
Content-Encoding (an encoded body cannot be searched without decoding it) and not a HEAD.
Such a body is read whole; every secret the log redactor knows (password, TOTP secret,
recent tokens, access key) is replaced by its `<sha256:...>` fingerprint, and Content-Length
is set to the new length. Everything else streams untouched, byte for byte: success bodies
(the user's own data), chunked or larger error bodies, compressed ones.
"""

from __future__ import annotations

from typing import Final

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import UpstreamError
from proxy.log import REDACTOR

log = structlog.get_logger("proxy.scrub")

MAX_SCRUBBED_BODY: Final = 64 * 1024
IDENTITY_ENCODINGS: Final = frozenset({"", "identity"})


def scrubbable(method: str, status: int,
               headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether an answer is small, plain and an error: the only kind that is read whole."""
    if status < 400 or method == "HEAD":
        return False
    if headers.get("Content-Encoding", "").strip().lower() not in IDENTITY_ENCODINGS:
        return False
    length = headers.getall("Content-Length", [])
    return len(length) == 1 and length[0].strip().isdigit() \
        and int(length[0]) <= MAX_SCRUBBED_BODY


def scrub_bytes(body: bytes) -> bytes:
    """`body` with every secret the redactor knows replaced by its fingerprint."""
    text = body.decode("utf-8", "surrogateescape")
    clean = REDACTOR.scrub(text)
    return body if clean == text else clean.encode("utf-8", "surrogateescape")


async def error_body(method: str, upstream: aiohttp.ClientResponse,
                     headers: CIMultiDict[str]) -> bytes | None:
    """The scrubbed body of a small error answer (its Content-Length in `headers` updated),
    or None when the answer is to be streamed as it is."""
    if not scrubbable(method, upstream.status, upstream.headers):
        return None
    try:
        body = await upstream.content.read()
    except (aiohttp.ClientPayloadError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamError(f"the upstream broke off its {upstream.status} answer: "
                            f"{exc.__class__.__name__}") from None
    clean = scrub_bytes(body)
    if clean is not body:
        log.warning("upstream_echoed_a_secret", status=upstream.status,
                    detail="replaced by its fingerprint in the answer to the client")
    headers["Content-Length"] = str(len(clean))
    return clean
