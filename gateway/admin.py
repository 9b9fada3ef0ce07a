"""Admin API: list, create, replace, delete and test providers over HTTP.

It exists only while the live config sets `admin.token` (checked per
request, so a reload can turn it on or off). The store is the config's
`include:` directory (see `gateway.store`); providers from the main file are
listed with `"source": "config"` and are read-only here. A write validates
with the config loader's own code, seals a plain-text key with the gateway's
public key, writes the file atomically and reloads; the response is sent
once the new config is live. Writes are serialised, so concurrent requests
leave a consistent directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from . import store
from .admin_auth import ADMIN, AdminState, admin_route, authorize
from .config import ProviderConfig, SecretRef, parse_provider
from .config.provider_api import DEFAULT_PASSTHROUGH
from .config.replicas import as_record
from .errors import GatewayError
from .models import UpstreamListError, fetch_upstream_models
from .proxy.request_body import read_body
from .redact import MASK, SECRETISH_HEADER
from .reload import Reloader
from .secrets import SecretError, SecretResolver
from .snapshot import ProviderRuntime, Snapshot

WRITABLE_FIELDS = frozenset(store.FIELD_ORDER)
# Stored sealed, shown as "***"; sending "***" back (or leaving it out) keeps them.
SECRET_FIELDS = ("api_key", "proxy_auth")


def _error(status: int, message: str, code: str, field: str | None = None) -> GatewayError:
    extra = {"field": field} if field is not None else {}
    return GatewayError(status, message, code, **extra)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def masked(provider: ProviderConfig) -> dict:
    """A provider as the API shows it: no key, no sealed value, no secret header."""
    t = provider.timeouts
    return {
        "name": provider.name,
        "provider_type": provider.provider_type,
        "base_url": provider.base_url,
        "api_key": MASK if provider.api_key is not None else None,
        "headers": {k: MASK if SECRETISH_HEADER.search(k) else v for k, v in provider.headers},
        "models": list(provider.models) if provider.models is not None else None,
        "timeouts": {"connect": t.connect, "first_byte": t.first_byte, "idle": t.idle},
        "max_connections": provider.max_connections,
        "ca_file": provider.ca_file,
        "proxy": provider.proxy,
        "proxy_auth": MASK if provider.proxy_auth is not None else None,
        "auth_header": provider.api.auth_header,
        "query": dict(provider.api.query),
        "endpoints": sorted(provider.api.endpoints) if provider.api.endpoints is not None else None,
        # null while the default (the inference endpoints) applies
        "passthrough": list(provider.api.passthrough)
        if provider.api.passthrough != DEFAULT_PASSTHROUGH
        else None,
        "stream_usage": provider.api.stream_usage,
        **as_record(provider.replicas),  # replicas, discovery, balancing, health_check
        "source": provider.source,
    }


def _find(snapshot: Snapshot, name: str) -> ProviderConfig:
    provider = snapshot.config.provider(name)
    if provider is None:
        raise _error(404, f"No provider named '{name}'", "provider_not_found")
    return provider


def _stored(snapshot: Snapshot, name: str, verb: str) -> ProviderConfig:
    """The provider, if the API may change it: only store fragments, not the main file."""
    existing = _find(snapshot, name)
    if existing.source != "store":
        raise _error(
            409,
            f"Provider '{name}' is defined in the main config file ({existing.file}); "
            f"{verb} it there",
            "read_only_provider",
        )
    return existing


def _check_writable(snapshot: Snapshot) -> Path:
    admin = snapshot.config.admin
    if admin is not None and not admin.writable:
        raise _error(
            409,
            "The admin API is read-only (admin.writable: false): change providers "
            "through the config repository",
            "read_only",
        )
    problem = store.writable_problem(snapshot.config.include)
    if problem:
        raise _error(409, f"Cannot store providers: {problem}", "store_not_writable")
    return snapshot.config.include  # type: ignore[return-value]


# A provider record is a few hundred bytes; this bounds what a caller with
# the token can make the gateway hold.
ADMIN_BODY_LIMIT = 1 << 20


async def _body(request: web.Request) -> dict:
    try:
        data = orjson.loads(await read_body(request, ADMIN_BODY_LIMIT))
    except orjson.JSONDecodeError:
        raise _error(400, "The request body is not valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise _error(422, "The request body must be a JSON object", "invalid_provider")
    for key in data:
        if key not in WRITABLE_FIELDS:
            known = ", ".join(store.FIELD_ORDER)
            raise _error(422, f"Unknown field '{key}' (known: {known})", "invalid_field", key)
    return data


def _validate(record: dict, path: Path) -> None:
    _, problems = parse_provider(record, path)
    if problems:
        first = problems[0]
        raise _error(422, first.message, "invalid_field", first.field or "name")


def _sent_secrets(body: dict) -> dict[str, str]:
    """The secrets the caller itself sent (not "***", which keeps the stored one)."""
    return {f: body[f] for f in SECRET_FIELDS if isinstance(body.get(f), str) and body[f] != MASK}


def _check_sent_secrets(sent: dict[str, str], snapshot: Snapshot) -> None:
    """422 naming the field for `env:` outside admin.env_prefixes (else the
    caller could send any variable of the gateway's environment as a Bearer
    token to a base_url of its choosing), and for any value the resolver
    refuses (CR/LF, control characters): its own check, before the write.
    Values kept from the stored file are the operator's, not checked here."""
    admin = snapshot.config.admin
    prefixes = admin.env_prefixes if admin is not None else ()
    resolver = SecretResolver(warn_plain=False)
    for field, value in sent.items():
        if value.startswith("sealed:"):
            continue  # unsealed and checked by the reload
        if value.startswith("env:") and not value[4:].startswith(prefixes):
            allowed = ", ".join(prefixes)
            reason = (
                f"only variables starting with {allowed} may be named (admin.env_prefixes)"
                if prefixes
                else "not allowed through the admin API; an operator can allow variable "
                "name prefixes with admin.env_prefixes in the config"
            )
            raise _error(422, f"{field}: env: references are {reason}", "invalid_field", field)
        try:
            resolver.resolve(SecretRef(value, "admin", "request body", field))
        except SecretError as exc:
            raise _error(422, f"{field}: {exc}", "invalid_field", field) from None


def _seal_key(record: dict, sealer: Callable[[str, str], str] | None) -> None:
    """Replace plain-text secrets (api_key, proxy_auth) with their sealed form
    (scope = provider name)."""
    for field in SECRET_FIELDS:
        key = record.get(field)
        if key is None or not isinstance(key, str) or key.startswith(("sealed:", "env:")):
            continue
        if field == "proxy_auth" and ":" not in key:
            raise _error(422, "must be USER:PASSWORD", "invalid_field", field)
        if sealer is None:
            raise _error(
                409,
                f"Cannot store {field}: the gateway has no seal key (seal_key_file) to seal "
                "it with; use an env:NAME reference or configure a key",
                "no_seal_key",
                field,
            )
        try:
            record[field] = sealer(key, record["name"])
        except SecretError as exc:  # never a 500: the message names no secret
            raise _error(422, f"{field}: {exc}", "invalid_field", field) from None


async def _commit(request: web.Request, path: Path, text: str | None) -> Snapshot:
    """Write (or delete, text=None) one fragment and reload; undo if the reload fails."""
    state = request.app[ADMIN]
    previous = path.read_text(encoding="utf-8") if path.exists() else None
    try:
        if text is None:
            store.remove(path)
        else:
            store.write_atomic(path, text)
    except OSError as exc:
        # e.g. a read-only ConfigMap mount: nothing was changed.
        raise _error(
            409,
            f"Cannot write {path.name} in the store: {exc.strerror or exc}",
            "store_not_writable",
        ) from None
    if state.reloader.reload():
        return state.reloader.holder.current
    # The new file made the whole config invalid (e.g. a sealed value that
    # does not unseal): put the old file back so the directory stays valid.
    if previous is None:
        store.remove(path)
    else:
        store.write_atomic(path, previous)
    error = state.reloader.status.last_error or "the new config was rejected"
    raise _error(422, error, "config_rejected")


# -- handlers -----------------------------------------------------------------


def _read_only_reason(snapshot: Snapshot) -> str | None:
    admin = snapshot.config.admin
    if admin is not None and not admin.writable:
        return "admin.writable is false: change providers through the config repository"
    return store.writable_problem(snapshot.config.include)


async def list_providers(request: web.Request) -> web.Response:
    snapshot = authorize(request)
    reason = _read_only_reason(snapshot)
    return _json(
        {
            "providers": [masked(p) for p in snapshot.config.providers],
            # Lets a UI disable write controls up front instead of on a 409.
            "writable": reason is None,
            "read_only_reason": reason,
        }
    )


async def get_provider(request: web.Request) -> web.Response:
    snapshot = authorize(request)
    provider = masked(_find(snapshot, request.match_info["name"]))
    runtime = snapshot.providers.get(provider["name"])
    if runtime is not None:  # each upstream server and how it is doing now
        provider["replicas_state"] = runtime.replicas_state()
    return _json(provider)


async def create_provider(request: web.Request) -> web.Response:
    snapshot = authorize(request)
    record = {k: v for k, v in (await _body(request)).items() if v is not None}
    sent = _sent_secrets(record)
    async with request.app[ADMIN].lock:
        snapshot = request.app[ADMIN].reloader.holder.current
        include = _check_writable(snapshot)
        name = record.get("name")
        path = store.fragment_path(include, name if isinstance(name, str) else "_")
        _validate(record, path)
        _check_sent_secrets(sent, snapshot)
        if snapshot.config.provider(name) is not None or path.exists():
            raise _error(409, f"A provider named '{name}' already exists", "duplicate_name", "name")
        _seal_key(record, snapshot.seal)
        snapshot = await _commit(request, path, store.render(record))
    return _json(masked(_find(snapshot, name)), status=201)


async def replace_provider(request: web.Request) -> web.Response:
    authorize(request)
    name = request.match_info["name"]
    body = await _body(request)
    # `"api_key": null` removes the stored key; absent or "***" keeps it.
    # The same for proxy_auth.
    removed = {f for f in SECRET_FIELDS if f in body and body[f] is None}
    sent = _sent_secrets(body)
    record = {k: v for k, v in body.items() if v is not None}
    if record.setdefault("name", name) != name:
        raise _error(422, "The name in the body must match the URL", "invalid_field", "name")
    async with request.app[ADMIN].lock:
        snapshot = request.app[ADMIN].reloader.holder.current
        existing = _stored(snapshot, name, "edit")
        include = _check_writable(snapshot)
        path = Path(existing.file)
        stored = store.read_raw(path)
        for field in SECRET_FIELDS:
            if field in removed:
                record.pop(field, None)
            elif record.get(field) in (None, MASK):
                # Keep the stored value: exactly the text on disk (sealed or env:).
                record.pop(field, None)
                if stored.get(field) is not None:
                    record[field] = stored[field]
        headers = record.get("headers")
        if isinstance(headers, dict):
            # A masked value sent back means "unchanged", as for api_key.
            old = stored.get("headers") or {}
            for key, value in headers.items():
                if value == MASK and key in old:
                    headers[key] = old[key]
        _validate(record, path)
        _check_sent_secrets(sent, snapshot)
        _seal_key(record, snapshot.seal)
        if path.parent != include:  # defensive: only ever write inside include/
            raise _error(
                409, f"Provider '{name}' is not in the store directory", "read_only_provider"
            )
        snapshot = await _commit(request, path, store.render(record))
    return _json(masked(_find(snapshot, name)))


async def delete_provider(request: web.Request) -> web.Response:
    authorize(request)
    name = request.match_info["name"]
    async with request.app[ADMIN].lock:
        snapshot = request.app[ADMIN].reloader.holder.current
        existing = _stored(snapshot, name, "remove")
        _check_writable(snapshot)
        await _commit(request, Path(existing.file), None)
    return web.Response(status=204)


def _runtime(snapshot: Snapshot, name: str) -> ProviderRuntime:
    _find(snapshot, name)
    return snapshot.providers[name]


async def provider_models(request: web.Request) -> web.Response:
    """The upstream's own list, as reported (never the static list, never cached)."""
    snapshot = authorize(request)
    runtime = _runtime(snapshot, request.match_info["name"])
    try:
        models = await fetch_upstream_models(runtime, snapshot.config.models.fetch_timeout)
    except UpstreamListError as exc:
        raise GatewayError(
            502,
            f"Provider '{runtime.name}': {exc}",
            "upstream_error",
            upstream_status=exc.status,
            upstream_body=exc.body,
        ) from None
    return _json({"object": "list", "data": models})


async def verify_provider(request: web.Request) -> web.Response:
    """One small chat request: does the provider answer with this key?"""
    snapshot = authorize(request)
    runtime = _runtime(snapshot, request.match_info["name"])
    try:
        body = orjson.loads(await read_body(request, ADMIN_BODY_LIMIT) or b"{}")
    except orjson.JSONDecodeError:
        body = {}
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        if runtime.config.models:
            model = runtime.config.models[0]
        else:
            try:
                listed = await fetch_upstream_models(runtime, snapshot.config.models.fetch_timeout)
            except UpstreamListError as exc:
                return _json({"valid": False, "error": str(exc)})
            if not listed:
                return _json({"valid": False, "error": "the provider lists no models"})
            model = listed[0]["id"]
    payload = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    headers = dict(runtime.upstream_headers)
    headers["Accept-Encoding"] = "identity"
    timeout = aiohttp.ClientTimeout(total=max(snapshot.config.models.fetch_timeout, 30.0))
    try:
        async with runtime.session.post(
            runtime.urls["chat/completions"],
            data=orjson.dumps(payload),
            headers={**headers, "Content-Type": "application/json"},
            allow_redirects=False,
            proxy_headers=runtime.proxy_headers(),
            timeout=timeout,
        ) as resp:
            # Redacted before the cut to 500 characters: a key across it is not half shown.
            start = await resp.content.read(65536)  # an error page: the start is enough
            text = runtime.redact(start.decode("utf-8", "replace"))[:500]
            if resp.status == 200:
                return _json({"valid": True, "model": model})
            return _json({"valid": False, "model": model, "error": f"HTTP {resp.status}: {text}"})
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = runtime.redact(f"{type(exc).__name__}: {exc}")
        return _json({"valid": False, "model": model, "error": error})


def add_admin_routes(app: web.Application, reloader: Reloader) -> None:
    app[ADMIN] = AdminState(reloader)
    r = app.router
    r.add_get("/admin/providers", admin_route(list_providers))
    r.add_post("/admin/providers", admin_route(create_provider))
    r.add_get("/admin/providers/{name}", admin_route(get_provider))
    r.add_put("/admin/providers/{name}", admin_route(replace_provider))
    r.add_delete("/admin/providers/{name}", admin_route(delete_provider))
    r.add_get("/admin/providers/{name}/models", admin_route(provider_models))
    r.add_post("/admin/providers/{name}/verify", admin_route(verify_provider))
