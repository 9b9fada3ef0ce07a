"""Reading a client's request body: bounded in raw and in decoded size.

The gateway parses the body (to read `model`) and may rewrite it, so a body
sent with `Content-Encoding: gzip` or `deflate` is decoded here and goes
upstream as plain bytes, its `Content-Encoding` header dropped (see
`forwarder.request_head`): what the upstream receives and what its headers
say always agree.

`limits.max_body_bytes` bounds both the bytes on the wire and the decoded
bytes. Decoding is streamed: every zlib call is asked for at most the bytes
still allowed (`max_length`), so a 200 KB body that would inflate to
gigabytes stops at the limit with a 413, and memory never holds more than
the limit plus one read. aiohttp's own decompression is switched off
(`auto_decompress=False` in `server.start_gateway`) because it has no such
bound.

An encoding the gateway cannot decode (br, zstd, compress, anything else)
answers 415 naming it, rather than passing bytes upstream that nobody could
read as JSON.
"""

from __future__ import annotations

import zlib

from aiohttp import web

from ..errors import GatewayError

# Stacked codings ("gzip, gzip") are legal; more than a few is an attack.
MAX_CODINGS = 4
_GZIP = ("gzip", "x-gzip")
_SUPPORTED = "gzip, deflate, identity"


def _too_large(limit: int, decoded: bool) -> GatewayError:
    what = "decodes to more than" if decoded else "is over"
    return GatewayError(
        413, f"The request body {what} the limit of {limit} bytes", "request_too_large"
    )


def _bad_encoding(coding: str, detail: str) -> GatewayError:
    return GatewayError(
        400,
        f"The request body is not valid {coding} data ({detail})",
        "invalid_content_encoding",
    )


def parse_codings(header: str | None) -> list[str]:
    """The content codings to undo, outermost first; identity ones dropped.

    Raises GatewayError 415 for a coding the gateway cannot decode.
    """
    if not header:
        return []
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > MAX_CODINGS:
        raise GatewayError(
            415,
            f"The request body has {len(codings)} content codings; at most {MAX_CODINGS} "
            "are decoded",
            "unsupported_content_encoding",
        )
    for coding in codings:
        if coding not in _GZIP and coding != "deflate":
            shown = coding if coding.isprintable() and len(coding) <= 40 else repr(coding[:40])
            raise GatewayError(
                415,
                f"Unsupported Content-Encoding '{shown}': the gateway decodes {_SUPPORTED}",
                "unsupported_content_encoding",
            )
    codings.reverse()  # the last coding applied is the first to undo
    return codings


class _Inflater:
    """One coding undone incrementally; never returns more than asked for."""

    __slots__ = ("_coding", "_d", "_early")

    def __init__(self, coding: str):
        self._coding = coding
        self._d: zlib._Decompress | None = None
        self._early = b""  # a lone first byte: deflate's format needs two to tell

    def _new(self, first: bytes) -> zlib._Decompress:
        if self._coding in _GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2), but some
        # clients send raw deflate; the zlib header tells them apart.
        is_zlib = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)

    def feed(self, data: bytes, budget: int) -> bytes:
        """Decoded bytes for `data`; more than `budget` raises OverflowError."""
        out = []
        size = 0
        if self._d is None and self._early:
            data, self._early = self._early + data, b""
        while data:
            if self._d is None:
                if len(data) < 2:
                    self._early = data
                    break
                self._d = self._new(data)
            elif self._d.eof:
                # Concatenated gzip members are one valid gzip body.
                if self._coding not in _GZIP:
                    raise _bad_encoding(self._coding, "data after the end of the stream")
                self._d = self._new(data)
            d = self._d
            try:
                chunk = d.decompress(data, budget - size + 1)
            except zlib.error as exc:
                raise _bad_encoding(self._coding, str(exc)) from None
            size += len(chunk)
            if size > budget:
                raise OverflowError
            out.append(chunk)
            # Below max_length zlib consumes all input, so what is left
            # here is only the start of a following gzip member.
            data = d.unused_data if d.eof else b""
        return b"".join(out)

    def finish(self) -> None:
        if self._d is None or not self._d.eof:
            raise _bad_encoding(self._coding, "the stream is truncated")


def _decode(inflaters: list[_Inflater], data: bytes, limit: int) -> bytes:
    for inflater in inflaters:
        data = inflater.feed(data, limit)
    return data


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, decoded, refusing more than `limit` bytes with 413.

    The limit is checked here, not through aiohttp's `client_max_size`, so a
    reload can change it.
    """
    coding = request.headers.get("Content-Encoding")
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(
            413, f"The request body is {length} bytes; the limit is {limit}", "request_too_large"
        )
    if coding is None and length is not None:
        # The common case, a plain body of known size within the limit: one
        # read. (aiohttp's own cap, client_max_size, is far above any limit.)
        return await request.read()
    inflaters = [_Inflater(c) for c in parse_codings(coding)]
    chunks = []
    raw = decoded = 0
    try:
        async for chunk in request.content.iter_any():
            raw += len(chunk)
            if raw > limit:
                raise _too_large(limit, decoded=False)
            if inflaters:
                chunk = _decode(inflaters, chunk, limit - decoded)
            decoded += len(chunk)
            chunks.append(chunk)
        for inflater in inflaters:
            inflater.finish()
    except OverflowError:
        raise _too_large(limit, decoded=True) from None
    return b"".join(chunks)
