"""Talk to a running proxy's admin endpoints from the command line."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any, Final, TextIO

TIMEOUT: Final = 90.0


def post_to_proxy(url: str, body: dict[str, Any], out: TextIO = sys.stdout) -> int:
    """POST `body` as JSON to `url`; print the answer; 0 on success, 1 otherwise."""
    request = urllib.request.Request(  # noqa: S310 - the proxy's own loopback address
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:  # noqa: S310
            answer, ok = resp.read(), True
    except urllib.error.HTTPError as exc:
        answer, ok = exc.read(), False
    except (urllib.error.URLError, OSError) as exc:
        print(f"Error: cannot reach the proxy at {url}: {exc}", file=sys.stderr)
        return 1
    out.write(_summary(answer) + "\n")
    return 0 if ok else 1


def _summary(answer: bytes) -> str:
    try:
        data = json.loads(answer)
    except ValueError:
        return answer.decode("utf-8", "replace")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        hint = f"\nHint: {error['hint']}" if error.get("hint") else ""
        return f"Error: {error.get('message')}{hint}"
    return json.dumps(data)
