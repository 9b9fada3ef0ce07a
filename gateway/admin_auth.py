"""The admin endpoints' gate: the admin token, checked on a leased snapshot.

Every `/admin/...` route (providers in admin.py, status and playground in
status.py, usage in usage_report.py) is registered through `admin_route`
and starts with `authorize(request)`: one check, not one copy per module.
The admin API exists only while the live config sets `admin.token`
(checked per request, so that a reload can turn it on or off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from .errors import GatewayError
from .lease import serve_leased
from .reload import Reloader
from .snapshot import Snapshot

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminState:
    def __init__(self, reloader: Reloader):
        self.reloader = reloader
        self.lock = asyncio.Lock()  # writes to the store, one at a time


ADMIN = web.AppKey("admin", AdminState)
_LEASED = web.RequestKey("leased_snapshot", Snapshot)


def authorize(request: web.Request) -> Snapshot:
    """The request's leased snapshot, once its admin token checks out."""
    snapshot = request[_LEASED]
    token = snapshot.admin_token
    if token is None:
        raise GatewayError(
            404, "The admin API is disabled: set admin.token in the config", "admin_disabled"
        )
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer" or not token.matches(given.strip()):
        raise GatewayError(401, "Missing or invalid admin token", "invalid_admin_token")
    return snapshot


def admin_route(handler: Handler) -> Handler:
    """An admin handler, on a leased snapshot that `authorize(request)` checks.

    Leased like every handler (gateway/lease.py): a reload meanwhile cannot
    close the pools this request uses (models, verify)."""

    async def serve(request: web.Request, snapshot: Snapshot) -> web.StreamResponse:
        request[_LEASED] = snapshot
        return await handler(request)

    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await serve_leased(request.app[ADMIN].reloader.holder, request, serve)

    return wrapped
