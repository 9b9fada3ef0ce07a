"""Errors the gateway itself makes, in the OpenAI shape clients already parse.

`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`: the
OpenAI SDKs turn these into their proper exception classes by status code.
"""

from __future__ import annotations

import orjson
from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


def error_body(status: int, message: str, code: str, **extra: object) -> bytes:
    err = {"message": message, "type": _TYPES.get(status, "api_error"), "param": None, "code": code}
    err.update(extra)
    return orjson.dumps({"error": err})


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None, **extra: object
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, code, **extra),
        content_type="application/json",
        headers=headers,
    )


class GatewayError(Exception):
    """Raised anywhere below a handler; turned into an OpenAI-shaped response."""

    def __init__(self, status: int, message: str, code: str, **extra: object):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return error_response(self.status, self.message, self.code, headers, **self.extra)
