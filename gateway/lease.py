"""The snapshot lease, written once for every handler but the hot path.

A handler leases the live snapshot for its whole answer (`holder.acquire()`
at the start, `holder.release()` when the answer is done), so that a reload
meanwhile cannot close the pools it uses: it runs to its end on the config
it started with. `serve_leased` is that pattern, plus the one thing every
such handler does with a `GatewayError`: answer it, OpenAI-shaped, while
the lease is still held. The model-routed `_proxy` in gateway/app.py spells
it out itself: it is the hot path, and this is one coroutine frame more.

`HOLDER` lives here rather than in gateway/app.py so that modules app.py
imports (ui_routes.py) can read the holder without importing app.py back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import GatewayError
from .snapshot import Snapshot, SnapshotHolder

HOLDER = web.AppKey("holder", SnapshotHolder)
Serve = Callable[[web.Request, Snapshot], Awaitable[web.StreamResponse]]


async def serve_leased(
    holder: SnapshotHolder, request: web.Request, serve: Serve
) -> web.StreamResponse:
    """`serve(request, snapshot)` on the live snapshot, leased until it returns;
    a GatewayError it raises becomes its error response."""
    snapshot = holder.acquire()
    try:
        return await serve(request, snapshot)
    except GatewayError as exc:
        return exc.response()
    finally:
        holder.release(snapshot)
