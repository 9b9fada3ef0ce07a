"""Model lists: each provider's own `/models`, merged for `GET /v1/models`.

Lists are fetched concurrently and cached per provider runtime for
`models.cache_ttl` seconds (a changed provider gets a new runtime, hence an
empty cache). A provider with a static `models:` list is never asked. A
provider that is down or slow is logged and left out of the merged list.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson

from .config import ModelsSettings
from .snapshot import ProviderRuntime, Snapshot

log = logging.getLogger("gateway.models")
# Bounds on what an upstream's /models answer may make the gateway hold:
# OpenRouter lists a few hundred models in ~0.5 MB.
MAX_LIST_BYTES = 16 << 20
MAX_MODELS = 10_000


class UpstreamListError(Exception):
    """The upstream did not give a model list.

    Never carries a secret: `fetch_upstream_models` passes its message and
    the upstream's body through the provider's redactor (an upstream's error
    page may quote the request's Authorization header), so the admin API,
    the cache's `error` and log lines can show them as they are.
    """

    def __init__(self, message: str, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


def _static_entries(runtime: ProviderRuntime) -> list[dict]:
    return [
        {"id": m, "object": "model", "created": 0, "owned_by": runtime.name}
        for m in runtime.config.models or ()
    ]


async def fetch_upstream_models(runtime: ProviderRuntime, timeout: float) -> list[dict]:
    """GET the provider's `/models`, as reported. Raises UpstreamListError, redacted."""
    try:
        return await _fetch(runtime, timeout)
    except UpstreamListError as exc:
        redact = runtime.redact
        body = None if exc.body is None else redact(exc.body)
        raise UpstreamListError(redact(str(exc)), exc.status, body) from None


async def _fetch(runtime: ProviderRuntime, timeout: float) -> list[dict]:
    headers = dict(runtime.upstream_headers)
    # The session never decompresses (forwarding is verbatim), so ask for
    # plain bytes here where the gateway itself reads the body.
    headers["Accept-Encoding"] = "identity"
    headers["Accept"] = "application/json"
    url = runtime.urls["models"]
    try:
        async with runtime.session.get(
            url,
            headers=headers,
            allow_redirects=False,
            proxy_headers=runtime.proxy_headers(),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            body = await _read_bounded(resp, url)
            if resp.status != 200:
                text = body[:2000].decode("utf-8", "replace")
                raise UpstreamListError(
                    f"{url} answered HTTP {resp.status}", status=resp.status, body=text
                )
    except TimeoutError:
        raise UpstreamListError(f"{url} did not answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise UpstreamListError(f"{url}: {type(exc).__name__}: {exc}") from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamListError(f"{url} did not answer JSON") from None
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UpstreamListError(f"{url} answered JSON without a 'data' list")
    models = [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if len(models) > MAX_MODELS:
        # Ids become metric labels and /v1/models entries: keep them bounded.
        log.warning(
            "%s listed %d models; the gateway keeps the first %d", url, len(models), MAX_MODELS
        )
        models = models[:MAX_MODELS]
    return models


async def _read_bounded(resp: aiohttp.ClientResponse, url: object) -> bytes:
    """The body, refusing more than MAX_LIST_BYTES: a list is never that big."""
    body = await resp.content.read(MAX_LIST_BYTES + 1)
    while len(body) <= MAX_LIST_BYTES and not resp.content.at_eof():
        more = await resp.content.read(MAX_LIST_BYTES + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_LIST_BYTES:
        raise UpstreamListError(f"{url} answered more than {MAX_LIST_BYTES} bytes")
    return body


async def provider_models(runtime: ProviderRuntime, settings: ModelsSettings) -> list[dict]:
    """The provider's models with unprefixed ids, from config or a cached fetch."""
    if runtime.config.models is not None:
        return _static_entries(runtime)
    cache = runtime.model_cache
    if cache.fresh(settings.cache_ttl):
        return cache.models  # type: ignore[return-value]
    if cache.pending is None:
        # One fetch at a time per provider; concurrent callers share it.
        cache.pending = asyncio.ensure_future(
            fetch_upstream_models(runtime, settings.fetch_timeout)
        )
    pending = cache.pending
    try:
        models = await asyncio.shield(pending)
    except UpstreamListError as exc:
        cache.error = str(exc)
        raise
    finally:
        if cache.pending is pending and pending.done():
            cache.pending = None
    cache.models, cache.fetched_at, cache.error = models, time.monotonic(), None
    cache.ids = frozenset(m["id"] for m in models)
    return models


def _prefixed(runtime: ProviderRuntime, entry: dict) -> dict:
    out = dict(entry)
    out["id"] = f"{runtime.name}/{entry['id']}"
    out.setdefault("object", "model")
    out.setdefault("created", 0)
    out.setdefault("owned_by", runtime.name)
    return out


async def _every_provider(snapshot: Snapshot) -> list[tuple[ProviderRuntime, list | BaseException]]:
    """Each provider's list (or why it has none), fetched concurrently, in config order."""
    runtimes = list(snapshot.providers.values())
    settings = snapshot.config.models
    results = await asyncio.gather(
        *(provider_models(r, settings) for r in runtimes), return_exceptions=True
    )
    return list(zip(runtimes, results, strict=True))


async def list_models(snapshot: Snapshot) -> list[dict]:
    """Every provider's models, ids `PROVIDER/MODEL`; failures are left out."""
    merged: list[dict] = []
    for runtime, result in await _every_provider(snapshot):
        if isinstance(result, BaseException):
            log.warning("models of provider '%s' left out: %s", runtime.name, result)
            continue
        merged.extend(_prefixed(runtime, m) for m in result)
    return merged


async def find_model(snapshot: Snapshot, model_id: str) -> dict | None:
    """One model by its `PROVIDER/MODEL` id (or an unprefixed id some provider lists)."""
    prefix, _, rest = model_id.partition("/")
    runtime = snapshot.providers.get(prefix)
    if runtime is not None and rest:
        try:
            models = await provider_models(runtime, snapshot.config.models)
        except UpstreamListError as exc:
            log.warning("models of provider '%s' unavailable: %s", runtime.name, exc)
            return None
        for m in models:
            if m["id"] == rest:
                return _prefixed(runtime, m)
        return None
    found = await provider_listing(snapshot, model_id)
    if found is None:
        return None
    runtime, entry = found
    return _prefixed(runtime, entry)


async def provider_listing(snapshot: Snapshot, model: str) -> tuple[ProviderRuntime, dict] | None:
    """The first provider (config order) whose list has `model`, unprefixed."""
    for runtime, result in await _every_provider(snapshot):
        if isinstance(result, BaseException):
            continue
        for m in result:
            if m["id"] == model:
                return runtime, m
    return None
