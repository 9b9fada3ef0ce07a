"""The hot path: one client request -> one upstream request -> bytes back.

The request body is parsed only to read `model`; if the model needs a new
name upstream, just that JSON string is replaced in the raw bytes (no
re-encoding of the prompt). The upstream body is written to the client
chunk by chunk as it arrives, untouched: SSE reaches the client exactly as
the upstream sent it. Status codes, headers (minus hop-by-hop) and error
bodies pass through. Redirects are never followed.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from .errors import GatewayError
from .router import route
from .snapshot import ProviderRuntime, Snapshot

log = logging.getLogger("gateway.forwarder")

# RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the gateway owns.
# Lower-case plain strings: header names are compared after .lower().
HOP_BY_HOP = frozenset(
    h
    for h in (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
# Credentials the client meant for the gateway never go upstream.
_DROP_FROM_CLIENT = HOP_BY_HOP | {
    "host",
    "authorization",
    "content-length",
    "expect",
    "api-key",
    "x-api-key",
    "cookie",
}
# Cookies are per client; an upstream's must not reach every client.
_DROP_FROM_UPSTREAM = HOP_BY_HOP | {"set-cookie"}


def _connection_listed(headers) -> frozenset[str]:
    value = headers.get(hdrs.CONNECTION)
    if not value:
        return frozenset()
    return frozenset(v.strip().lower() for v in value.split(","))


def upstream_request_headers(client_headers, runtime: ProviderRuntime) -> CIMultiDict:
    """Client headers minus hop-by-hop and credentials, plus the provider's."""
    extra_drop = _connection_listed(client_headers)
    out = CIMultiDict()
    for name, value in client_headers.items():
        low = name.lower()
        if low not in _DROP_FROM_CLIENT and low not in extra_drop:
            out.add(name, value)
    # aiohttp would otherwise offer gzip on the client's behalf, and the
    # compressed reply (passed through verbatim) would reach a client that
    # never asked for it.
    if hdrs.ACCEPT_ENCODING not in out:
        out[hdrs.ACCEPT_ENCODING] = "identity"
    out.update(runtime.upstream_headers)
    return out


def response_headers(upstream_headers) -> CIMultiDict:
    extra_drop = _connection_listed(upstream_headers)
    out = CIMultiDict()
    for name, value in upstream_headers.items():
        low = name.lower()
        if low not in _DROP_FROM_UPSTREAM and low not in extra_drop:
            out.add(name, value)
    return out


def parse_model(body: bytes) -> tuple[dict, str]:
    """The JSON object and its `model`. Raises GatewayError 400."""
    if not body:
        raise GatewayError(400, "The request body is empty: expected a JSON object", "invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"The request body is not valid JSON: {exc}", "invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "The request body must be a JSON object", "invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(
            400,
            "You must provide a model parameter: a string PROVIDER/MODEL",
            "missing_model",
            param="model",
        )
    return payload, model


_WS = b" \t\r\n"


def rewrite_model(body: bytes, payload: dict, new_model: str) -> bytes:
    """Replace the top-level `model` string in the raw body, leaving all else.

    The fast path edits the bytes when `"model"` occurs exactly once as a
    key; anything unusual (duplicates, escapes) falls back to re-encoding the
    parsed object, which is always correct.
    """
    key = body.find(b'"model"')
    if key > 0 and body.find(b'"model"', key + 7) < 0 and body[key - 1] != 0x5C:  # backslash
        j = key + 7
        n = len(body)
        while j < n and body[j] in _WS:
            j += 1
        if j < n and body[j] == 0x3A:  # ':'
            j += 1
            while j < n and body[j] in _WS:
                j += 1
            if j < n and body[j] == 0x22:  # '"'
                end = j + 1
                while end < n and body[end] != 0x22:
                    end += 2 if body[end] == 0x5C else 1
                if end < n:
                    try:
                        old = orjson.loads(body[j : end + 1])
                    except orjson.JSONDecodeError:
                        old = None
                    if old == payload["model"]:
                        return b"".join((body[:j], orjson.dumps(new_model), body[end + 1 :]))
    payload = dict(payload)
    payload["model"] = new_model
    return orjson.dumps(payload)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refusing more than `limit` bytes with 413.

    The limit is checked here, not through aiohttp's `client_max_size`, so a
    reload can change it.
    """
    length = request.content_length
    if length is not None:
        if length > limit:
            raise GatewayError(
                413,
                f"The request body is {length} bytes; the limit is {limit}",
                "request_too_large",
            )
        return await request.read()
    chunks = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise GatewayError(
                413, f"The request body is over the limit of {limit} bytes", "request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def forward(request: web.Request, snapshot: Snapshot, endpoint: str) -> web.StreamResponse:
    """Handle one OpenAI-style POST: parse, route, forward, stream back."""
    body = await read_body(request, snapshot.config.limits.max_body_bytes)
    payload, model = parse_model(body)
    runtime, upstream_model = await route(snapshot, model)
    if upstream_model != model:
        body = rewrite_model(body, payload, upstream_model)
    headers = upstream_request_headers(request.headers, runtime)
    runtime.acquire()
    try:
        return await _exchange(request, runtime, runtime.urls[endpoint], body, headers)
    finally:
        runtime.release()


async def _exchange(
    request: web.Request,
    runtime: ProviderRuntime,
    url,
    body: bytes,
    headers: CIMultiDict,
) -> web.StreamResponse:
    name = runtime.name
    try:
        upstream = await runtime.session.post(
            url, data=body, headers=headers, allow_redirects=False
        )
    except aiohttp.ConnectionTimeoutError:
        raise GatewayError(
            504,
            f"Provider '{name}' did not accept a connection within "
            f"{runtime.config.timeouts.connect:g}s",
            "upstream_connect_timeout",
        ) from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise GatewayError(
            504,
            f"Provider '{name}' sent no response within {runtime.config.timeouts.first_byte:g}s",
            "upstream_timeout",
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise GatewayError(
            502,
            f"Cannot connect to provider '{name}' at {runtime.base_url.host}:"
            f"{runtime.base_url.port}: {exc.os_error.strerror or exc.os_error}",
            "upstream_unreachable",
        ) from None
    except aiohttp.ClientError as exc:
        raise GatewayError(
            502, f"Provider '{name}' failed: {type(exc).__name__}: {exc}", "upstream_error"
        ) from None

    finished = False
    try:
        status = upstream.status
        if 300 <= status < 400:
            raise GatewayError(
                502,
                f"Provider '{name}' answered with a redirect ({status}); the gateway "
                "never follows redirects (the provider's key would go along): "
                "fix base_url",
                "upstream_redirect",
            )
        # Headers are in: from now on the limit is the gap between chunks.
        conn = upstream.connection
        if conn is not None and conn.protocol is not None:
            conn.protocol.read_timeout = runtime.config.timeouts.idle
            conn.protocol.start_timeout()  # re-arm: the old timer still has first_byte
        out = web.StreamResponse(
            status=status, reason=upstream.reason, headers=response_headers(upstream.headers)
        )
        await out.prepare(request)
        read = upstream.content.readany
        write = out.write
        while True:
            try:
                chunk = await read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                # Bytes are already out: the status can no longer change. Cut
                # the connection so the client sees a broken stream, not a
                # clean end.
                log.warning(
                    "provider '%s' stream broke after headers: %s",
                    name,
                    f"{type(exc).__name__}: {exc}" if str(exc) else "idle timeout",
                )
                out.force_close()
                if request.transport is not None:
                    request.transport.close()
                return out
            if not chunk:
                break
            try:
                await write(chunk)
            except ConnectionError:
                return out  # the client went away; `finally` drops the upstream
        await out.write_eof()
        finished = True
        return out
    finally:
        if finished:
            upstream.release()
        else:
            # Closing (not releasing) drops the upstream connection at once,
            # so the model stops generating for a client that is gone.
            upstream.close()
