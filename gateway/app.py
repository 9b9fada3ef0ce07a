"""HTTP routes: the OpenAI-compatible API, health, and the catch-all 404.

Handlers read `holder.current` once, at the start: a request runs to its end
on the snapshot it started with, whatever reloads happen meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import orjson
from aiohttp import hdrs, web

from .errors import GatewayError, error_response
from .forwarder import forward
from .models import find_model, list_models
from .snapshot import Snapshot, SnapshotHolder

HOLDER = web.AppKey("holder", SnapshotHolder)
# aiohttp's own cap; the real body limit is enforced in forwarder.read_body
# so that a reload can change it.
_CLIENT_MAX_SIZE = 1 << 40

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_auth(request: web.Request, snapshot: Snapshot) -> None:
    keys = snapshot.auth_keys
    if keys is None:
        return
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise GatewayError(
            401,
            "Missing API key: send it as 'Authorization: Bearer <key>'",
            "missing_api_key",
        )
    ok = False
    for key in keys:  # no short-circuit: the time taken says nothing about which key
        ok |= key.matches(token)
    if not ok:
        raise GatewayError(401, "Invalid API key", "invalid_api_key")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _proxy(endpoint: str, request: web.Request) -> web.StreamResponse:
    snapshot = request.app[HOLDER].current
    try:
        check_auth(request, snapshot)
        return await forward(request, snapshot, endpoint)
    except GatewayError as exc:
        return exc.response()


async def models_list(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    try:
        check_auth(request, snapshot)
    except GatewayError as exc:
        return exc.response()
    return _json({"object": "list", "data": await list_models(snapshot)})


async def models_get(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    model_id = request.match_info["model_id"]
    try:
        check_auth(request, snapshot)
        found = await find_model(snapshot, model_id)
        if found is None:
            raise GatewayError(
                404, f"The model '{model_id}' does not exist", "model_not_found", param="model"
            )
    except GatewayError as exc:
        return exc.response()
    return _json(found)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    return _json(
        {
            "status": "ready",
            "config_hash": snapshot.digest,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot.loaded_at)),
            "providers": len(snapshot.providers),
        }
    )


async def not_found(request: web.Request) -> web.Response:
    return error_response(
        404, f"Unknown endpoint {request.method} {request.path}", "unknown_endpoint"
    )


def create_app(holder: SnapshotHolder) -> web.Application:
    app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
    app[HOLDER] = holder
    r = app.router
    r.add_post("/v1/chat/completions", partial(_proxy, "chat/completions"))
    r.add_post("/v1/completions", partial(_proxy, "completions"))
    r.add_post("/v1/embeddings", partial(_proxy, "embeddings"))
    r.add_get("/v1/models", models_list)
    r.add_get("/v1/models/{model_id:.+}", models_get)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_route("*", "/{tail:.*}", not_found)

    async def close_pools(app: web.Application) -> None:
        await holder.close()

    app.on_cleanup.append(close_pools)
    return app
