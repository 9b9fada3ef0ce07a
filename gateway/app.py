"""HTTP routes: the OpenAI-compatible API, health, and the catch-all 404.

Handlers lease the snapshot once, at the start (`holder.acquire()`), and
release it when the response is done: a request runs to its end on the
snapshot it started with, and its providers' pools stay open until then,
whatever reloads happen meanwhile (gateway/lease.py; `_proxy` spells the
lease out itself).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from functools import partial

import orjson
from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE

from .admin import add_admin_routes
from .cors import decorate, preflight
from .errors import GatewayError, error_response
from .lease import HOLDER, Serve, serve_leased
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .model_warmup import ModelWarmer
from .models import find_model, list_models
from .proxy.endpoints import Endpoint, gateway_paths
from .proxy.forwarder import ANONYMOUS, CLIENT, forward
from .proxy.passthrough import ResponseOwners, by_response_id, passthrough
from .proxy.replica_metrics import replica_rows, replicas_by_provider
from .reload import Reloader
from .snapshot import Snapshot, SnapshotHolder
from .status import add_status_routes
from .ui_routes import add_ui_routes
from .usage_report import add_usage_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Lifecycle:
    """Process state the probes report; `draining` is set on SIGTERM."""

    def __init__(self) -> None:
        self.draining = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", Metrics)
OWNERS = web.AppKey("response_owners", ResponseOwners)
# Absent when the app serves a fixed snapshot (no reloads).
RELOADER = web.AppKey("reloader", Reloader)
# aiohttp's own cap; the real body limit is enforced in request_body.read_body
# so that a reload can change it.
_CLIENT_MAX_SIZE = 1 << 40


def check_auth(request: web.Request, snapshot: Snapshot) -> str:
    """Raise 401 unless the request carries a valid key; return the key's
    client name (`anonymous` when the gateway is open), never the key."""
    keys = snapshot.auth_keys
    if keys is None:
        return ANONYMOUS
    headers = request.headers
    scheme, _, token = headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    if not token:
        # Anthropic's SDKs send `x-api-key`; Azure OpenAI clients `api-key`.
        token = (headers.get("x-api-key") or headers.get("api-key") or "").strip()
    if not token:
        raise GatewayError(
            401,
            "Missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
            "missing_api_key",
        )
    found = None
    names = snapshot.config.auth.names if snapshot.config.auth else ()
    # No short-circuit: the time taken says nothing about which key matched.
    for i, key in enumerate(keys):
        if key.matches(token):
            found = i
    if found is None:
        raise GatewayError(401, "Invalid API key", "invalid_api_key")
    return names[found] if found < len(names) else f"key-{found + 1}"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _proxy(endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
    holder = request.app[HOLDER]
    snapshot = holder.acquire()
    try:
        client = check_auth(request, snapshot)
        # forward() returns only after the last byte is written, so the
        # lease covers the whole stream.
        sniff = request.app[OWNERS].sniffer() if endpoint.remembers_ids else None
        return await forward(request, snapshot, endpoint, request.app[METRICS], sniff, client)
    except GatewayError as exc:
        return exc.response()
    finally:
        holder.release(snapshot)


async def _leased(request: web.Request, serve: Serve) -> web.StreamResponse:
    """Lease the live snapshot for the whole answer, check the client's key,
    then `serve`. (The model-routed handler above spells this out itself:
    it is the hot path, and this is one coroutine frame more.)"""

    async def authorized(request: web.Request, snapshot: Snapshot) -> web.StreamResponse:
        request[CLIENT] = check_auth(request, snapshot)
        return await serve(request, snapshot)

    return await serve_leased(request.app[HOLDER], request, authorized)


async def _passthrough(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    return await _leased(request, lambda r, s: passthrough(r, s, metrics))


async def _by_response_id(request: web.Request) -> web.StreamResponse:
    metrics, owners = request.app[METRICS], request.app[OWNERS]
    return await _leased(request, lambda r, s: by_response_id(r, s, metrics, owners))


async def _list_models(request: web.Request, snapshot: Snapshot) -> web.Response:
    return _json({"object": "list", "data": await list_models(snapshot)})


async def _get_model(request: web.Request, snapshot: Snapshot) -> web.Response:
    model_id = request.match_info["model_id"]
    found = await find_model(snapshot, model_id)
    if found is None:
        raise GatewayError(
            404, f"The model '{model_id}' does not exist", "model_not_found", param="model"
        )
    return _json(found)


async def models_list(request: web.Request) -> web.StreamResponse:
    return await _leased(request, _list_models)


async def models_get(request: web.Request) -> web.StreamResponse:
    return await _leased(request, _get_model)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    draining = request.app[LIFECYCLE].draining
    body: dict[str, object] = {
        "status": "draining" if draining else "ready",
        "config_hash": snapshot.digest,
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot.loaded_at)),
        "providers": len(snapshot.providers),
        "pid": os.getpid(),  # tells `--workers` processes apart
    }
    replicas = replicas_by_provider(snapshot)
    if replicas:
        # Shown, not judged: a backend with every replica out makes its own
        # requests 503, while this gateway stays ready for the others.
        body["replicas"] = replicas
    reloader = request.app.get(RELOADER)
    if reloader is not None:
        # A rejected reload leaves the gateway ready (the old config serves);
        # it shows here for operators instead.
        body["reload"] = reloader.status.as_dict()
    return _json(body, status=503 if draining else 200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def response_head_hook(
    holder: SnapshotHolder,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """aiohttp's `on_response_prepare` callback: the last touches to every
    routed response's head (handlers, the catch-all 404, aiohttp's 500 for
    an exception), run before it is sent, streamed answers included. One
    callback for both jobs, so that CORS off costs one `is None` test.

    No `Server` header of the gateway's own (it adds nothing but a
    fingerprint), while an upstream's own passes through a proxied answer:
    aiohttp fills it in with `headers.setdefault(SERVER, SERVER_SOFTWARE)`
    just before this signal, and an identity test tells that default apart
    from an upstream's header (a new str parsed from the upstream's bytes,
    even when its text is the same). No monkeypatching of aiohttp's globals.

    CORS headers from the live config, so that a reload turns them on or off.
    """

    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            del headers[hdrs.SERVER]
        cors = holder.current.config.cors
        if cors is not None:
            decorate(cors, request, headers)

    return on_response_prepare


def answer_preflight(fallback: Handler) -> Handler:
    """The OPTIONS handler of a route: a CORS preflight is answered here,
    before auth (a browser sends no credentials with one); any other OPTIONS
    request, or any with CORS off, goes to `fallback` as it always did."""

    async def options(request: web.Request) -> web.StreamResponse:
        cors = request.app[HOLDER].current.config.cors
        if cors is not None:
            answer = preflight(cors, request)
            if answer is not None:
                return answer
        return await fallback(request)

    return options


async def not_found(request: web.Request) -> web.Response:
    return error_response(
        404, f"Unknown endpoint {request.method} {request.path}", "unknown_endpoint"
    )


def create_app(holder: SnapshotHolder, reloader: Reloader | None = None) -> web.Application:
    app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
    app[HOLDER] = holder
    app[METRICS] = Metrics()
    app[METRICS].replica_rows = lambda: replica_rows(holder.current)
    app[LIFECYCLE] = Lifecycle()
    app.on_response_prepare.append(response_head_hook(holder))
    r = app.router
    if reloader is not None:
        app[RELOADER] = reloader
        status = reloader.status
        app[METRICS].reload_counts = lambda: (status.successes, status.failures)
        # The admin API writes the store and reloads, so it needs a reloader;
        # each request checks that the live config sets admin.token.
        add_admin_routes(app, reloader)
        add_status_routes(app, app[METRICS], reloader)
        add_usage_routes(app, app[METRICS])
    app[OWNERS] = ResponseOwners()
    for path, endpoint in gateway_paths():
        r.add_post(path, partial(_proxy, endpoint))
    responses = "/v1/responses/{id}"
    r.add_get(responses, _by_response_id, allow_head=False)
    r.add_delete(responses, _by_response_id)
    r.add_post(responses + "/cancel", _by_response_id)
    r.add_get(responses + "/input_items", _by_response_id, allow_head=False)
    # A method's own route wins over "*" on one path (and must come first).
    r.add_route("OPTIONS", "/providers/{name}/{tail:.*}", answer_preflight(_passthrough))
    r.add_route("*", "/providers/{name}/{tail:.*}", _passthrough)
    r.add_get("/v1/models", models_list)
    r.add_get("/v1/models/{model_id:.+}", models_get)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    add_ui_routes(app)  # before the catch-all: routes match in order
    # Model-routed paths, /v1/models... have no OPTIONS route: theirs end here.
    r.add_route("OPTIONS", "/{tail:.*}", answer_preflight(not_found))
    r.add_route("*", "/{tail:.*}", not_found)

    # Real model names in metric labels from the first request on.
    warmer = ModelWarmer(holder)
    if reloader is not None:
        reloader.on_swap.append(warmer.warm)

    async def start_warming(app: web.Application) -> None:
        warmer.warm()

    async def close_pools(app: web.Application) -> None:
        await warmer.close()
        await holder.close()

    app.on_startup.append(start_warming)
    app.on_cleanup.append(close_pools)
    return app
