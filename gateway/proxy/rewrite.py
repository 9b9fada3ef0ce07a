"""What the upstream is sent and what the client gets back, as pure functions.

The request body is parsed only to read `model`; if the model needs a new
name upstream, just that JSON string is replaced in the raw bytes (no
re-encoding of the prompt). Request heads are built from the client's raw
header bytes, minus hop-by-hop headers and credentials, plus the
provider's own; response headers lose hop-by-hop ones, cookies and CORS.
"""

from __future__ import annotations

import orjson
from multidict import CIMultiDict

from ..errors import GatewayError
from ..snapshot import ProviderRuntime

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
    "x-request-id",  # replaced by the gateway's own (validated) id
    "authorization",
    "content-length",
    # The body goes upstream decoded (see request_body): its coding is gone.
    "content-encoding",
    "expect",
    "api-key",
    "x-api-key",
    "cookie",
}
_DROP_FROM_CLIENT_RAW = frozenset(h.encode() for h in _DROP_FROM_CLIENT)
# Cookies are per client; an upstream's must not reach every client. The
# gateway's `cors:` is the only CORS policy, on or off: an upstream's own
# (vLLM and LiteLLM allow every origin by default) must not open the gateway
# to every web page. These are all the CORS response headers (Fetch, and
# Private Network Access).
_CORS_RESPONSE_HEADERS = frozenset(
    "access-control-" + h
    for h in (
        "allow-origin",
        "allow-credentials",
        "allow-methods",
        "allow-headers",
        "expose-headers",
        "max-age",
        "allow-private-network",
    )
)
_DROP_FROM_UPSTREAM = HOP_BY_HOP | {"set-cookie"} | _CORS_RESPONSE_HEADERS


def _connection_tokens(value: str | None) -> frozenset[str]:
    """Header names listed in a Connection header: hop-by-hop too."""
    if not value:
        return frozenset()
    return frozenset(v.strip().lower() for v in value.split(","))


def request_head(
    raw_headers, runtime: ProviderRuntime, request_line: bytes, rid: str, body_length: int | None
) -> bytes:
    """The upstream request line and headers, as bytes ready to write.

    `raw_headers` are the client's (name, value) byte pairs as received
    (aiohttp's `request.raw_headers`): they pass on untouched, with no
    decoding and re-encoding, minus hop-by-hop ones and credentials; the
    provider's headers (its key included) replace any of the same name.
    `request_line` comes from `ProviderRuntime.request_lines` (built once)
    or `request_line()`; `body_length` None sends no Content-Length (a GET).
    """
    drop: frozenset[bytes] | tuple = ()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            drop = frozenset(t.strip().lower() for t in value.split(b","))
    own = runtime.upstream_header_names
    parts = [request_line]
    extend = parts.extend
    has_encoding = False
    for name, value in raw_headers:
        low = name.lower()
        if low in _DROP_FROM_CLIENT_RAW or low in own or low in drop:
            continue
        if low == b"accept-encoding":
            has_encoding = True
        extend((name, b": ", value, b"\r\n"))
    tail = (
        f"X-Request-Id: {rid}\r\n\r\n"
        if body_length is None
        else f"X-Request-Id: {rid}\r\nContent-Length: {body_length}\r\n\r\n"
    )
    if not has_encoding:
        # The body comes back verbatim, so never ask for a compression the
        # client did not ask for.
        tail = "Accept-Encoding: identity\r\n" + tail
    parts.append(runtime.upstream_header_block)
    parts.append(tail.encode("latin-1"))
    return b"".join(parts)


def response_headers(pairs) -> CIMultiDict:
    """The upstream's response headers minus hop-by-hop, cookie and CORS ones."""
    drop: frozenset[str] = frozenset()
    for name, value in pairs:
        if name.lower() == "connection":
            drop = _connection_tokens(value)
    out = CIMultiDict()
    for name, value in pairs:
        low = name.lower()
        if low not in _DROP_FROM_UPSTREAM and low not in drop:
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
