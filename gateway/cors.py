"""CORS, opt-in: browser apps on other origins may call the gateway's API.

Off unless the config has a `cors:` section; then the gateway answers
preflights itself (before auth: a browser sends no credentials with one) and
adds `Access-Control-Allow-Origin` to every API answer for an allowed
origin, set in aiohttp's `on_response_prepare` signal so that it is in the
head of a streamed answer too. With CORS off, nothing here runs but one
`is None` test per response, and every answer is as it was.

The admin API, the UI and the probes/metrics are same-origin pages or
machine endpoints: they never get CORS headers. An upstream's own
`Access-Control-*` headers never reach a client (`rewrite.response_headers`
drops them): the gateway's policy is the only one.

The `cors:` section itself (its dataclass and parsing) is
gateway/config/cors.py.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web
from multidict import CIMultiDict

from .config.cors import CorsConfig
from .errors import error_response

# Every method the API answers: passthrough paths take any of them.
ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
# First path segments that never get CORS: the admin API and the UI are
# same-origin, the probes and /metrics are for machines.
NOT_API = frozenset({"admin", "ui", "healthz", "readyz", "metrics"})
# A preflight's Access-Control-Request-Headers, reflected only when it is a
# plain list of header names (nothing else may be echoed into a response head).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN_LIST_RE = re.compile(rf"^{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*$")


def preflight(cors: CorsConfig, request: web.Request) -> web.Response | None:
    """The answer to a CORS preflight on an API path, or None for any
    other request (it is routed as it would be without CORS)."""
    headers = request.headers
    origin = headers.get(hdrs.ORIGIN)
    if origin is None or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in headers:
        return None
    if not is_api_path(request.path):
        return None
    if not cors.allows(origin):
        # A browser fails the preflight either way; the 403 tells a
        # person reading the network panel (or curl) why.
        return error_response(
            403,
            "This origin may not call the gateway from a browser: "
            "add it to cors.allow_origins in the gateway's config",
            "cors_origin_not_allowed",
        )
    allowed = cors.allow_headers_line
    if allowed is None:
        asked = headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").strip()
        allowed = asked if _TOKEN_LIST_RE.match(asked) else None
    out = {
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
        hdrs.ACCESS_CONTROL_MAX_AGE: str(cors.max_age),
    }
    if allowed:
        out[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = allowed
    # Allow-Origin and Vary are added by `decorate`, as for every answer.
    return web.Response(status=204, headers=out)


def decorate(cors: CorsConfig, request: web.Request, headers: CIMultiDict[str]) -> None:
    """Add the CORS headers of an API answer (run just before its head is sent)."""
    if not is_api_path(request.path):
        return
    if not cors.any_origin:
        # The answer differs by Origin (allowed or not), so a cache must
        # key on it, even for a request without one.
        _vary_origin(headers)
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or not cors.allows(origin):
        return
    headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*" if cors.any_origin else origin
    if cors.allow_credentials:
        headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
    is_preflight = request.method == hdrs.METH_OPTIONS and (
        hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )
    if cors.expose_line and not is_preflight:
        headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = cors.expose_line


def is_api_path(path: str) -> bool:
    """Whether CORS covers `path`: all but the admin API, the UI and the probes."""
    return path[1:].partition("/")[0] not in NOT_API


def _vary_origin(headers: CIMultiDict[str]) -> None:
    values = headers.getall(hdrs.VARY, ())
    tokens = {t.strip().lower() for v in values for t in v.split(",")}
    if "origin" in tokens or "*" in tokens:
        return
    # One joined line keeps an upstream's own Vary values (Accept-Encoding...).
    headers[hdrs.VARY] = ", ".join((*values, "Origin"))
