"""Keystone-shaped error bodies (`{"error": {"code", "title", "message"}}`) and their responses."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

UNAUTHORIZED = "The request you have made requires authentication."
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 503: "Service Unavailable"}


class SimError(Exception):
    """An error answer: raise it from a handler and the app turns it into a Keystone response."""

    def __init__(self, status: int, message: str = UNAUTHORIZED,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self, request: web.Request) -> web.Response:
        """The JSON response; a 401 also carries `WWW-Authenticate: Keystone uri=...`."""
        headers = dict(self.headers)
        if self.status == 401:
            headers["WWW-Authenticate"] = f'Keystone uri="{identity_uri(request)}"'
        return error_response(self.status, self.message, headers)


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """A Keystone error body with the given status."""
    body = {"error": {"code": status, "title": _TITLES.get(status, "Error"), "message": message}}
    return web.json_response(body, status=status, headers=headers)


def identity_uri(request: web.Request) -> str:
    """The identity endpoint a 401 points clients to (`/v3` or `/api/v2/identity`)."""
    suffix = "/v3" if request.path.startswith("/v3/") else "/api/v2/identity"
    return f"{request.url.origin()}{suffix}"
