"""Opt-in stream usage: ask for it upstream, and take it back out of the stream.

A provider with `stream_usage: true` gets `"stream_options":
{"include_usage": true}` added to streamed chat and completions requests
whose client did not ask for usage (`add_include_usage`), so that every
stream reports its tokens. The client did not ask for that extra chunk, so
`UsageChunkFilter` removes it on its way to the client: exactly the
usage-only event (`"choices": []` with a usage object, the vLLM and OpenAI
shape), and the `"usage":null` OpenAI appends to every other chunk once
usage is asked for. Every other byte passes as the upstream sent it; the
usage side copy (usage.py) still reads the upstream's own bytes.

The filter runs only on those opted-in streams. It is incremental: events
may be split anywhere across chunks. Bytes after the last complete event
wait for the rest of it (at most MAX_PENDING bytes: a longer event cannot be
the small usage chunk and passes through as it comes). An event it cannot
parse passes through unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from ..snapshot import ProviderRuntime
    from .relay import Body, Exchange

# A usage-only chunk is a few hundred bytes; anything pending longer than
# this is passed on as it comes, so the filter never holds much.
MAX_PENDING = 64 * 1024
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")
_USAGE = b'"usage"'
# How OpenAI ends every chunk but the last once include_usage is on.
_NULL_USAGE_END = b',"usage":null}'
_INCLUDE = b'"stream_options":{"include_usage":true},'
_STREAMED = frozenset(("chat/completions", "completions"))


def wants_stream_usage(endpoint: str, payload: dict) -> bool:
    """Whether to add include_usage: a stream whose client left usage out.

    A request with other stream_options (vLLM's continuous_usage_stats puts
    usage on every chunk) is left as the client wrote it.
    """
    if endpoint not in _STREAMED or payload.get("stream") is not True:
        return False
    options = payload.get("stream_options")
    if options is None:
        return True
    return (
        isinstance(options, dict)
        and options.keys() <= {"include_usage"}
        and not any(options.values())
    )


def stream_usage_body(
    ex: Exchange, endpoint: str, runtime: ProviderRuntime, payload: dict | None, data: Body
) -> Body:
    """What to send `runtime` for this attempt; sets or clears `ex.chunk_filter`.

    Called per attempt (failover may go from a provider with `stream_usage`
    to one without), only when either has something to do.
    """
    ex.chunk_filter = None
    if (
        runtime.config.api.stream_usage
        and ex.usage is not None  # usage accounting is on
        and payload is not None
        and type(data) is bytes
        and wants_stream_usage(endpoint, payload)
    ):
        ex.chunk_filter = UsageChunkFilter()
        return add_include_usage(data, payload)
    return data


def add_include_usage(body: bytes, payload: dict) -> bytes:
    """`body` asking for stream usage: one edit, the rest of the bytes as they were.

    Without `stream_options` the key is put first in the object; with one
    (`include_usage: false`) the object is encoded again, as rewrite_model
    does for any unusual body.
    """
    if "stream_options" not in payload:
        start = body.find(b"{")
        if start >= 0:
            return b"".join((body[: start + 1], _INCLUDE, body[start + 1 :]))
    edited = dict(payload)
    edited["stream_options"] = {"include_usage": True}
    return orjson.dumps(edited)


def _boundary_end(data: bytes) -> int:
    """The end of the last complete event in `data`, 0 if none."""
    end = 0
    for sep in _BOUNDARIES:
        pos = data.rfind(sep)
        if pos >= 0 and pos + len(sep) > end:
            end = pos + len(sep)
    return end


def _split_events(data: bytes) -> list[bytes]:
    """Complete events, each with its own blank-line ending."""
    events, start, n = [], 0, len(data)
    while start < n:
        end = n
        for sep in _BOUNDARIES:
            pos = data.find(sep, start)
            if pos >= 0 and pos + len(sep) < end:
                end = pos + len(sep)
        events.append(data[start:end])
        start = end
    return events


def _data_of(event: bytes) -> bytes | None:
    """The event's `data` field (lines joined), None without one."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def filter_event(event: bytes) -> bytes:
    """The event as the client should see it: b"" for the usage-only chunk."""
    if _USAGE not in event:
        return event
    data = _data_of(event)
    if data is None:
        return event
    pos = event.rfind(_NULL_USAGE_END)
    if pos >= 0 and not event[pos + len(_NULL_USAGE_END) :].strip(b"\r\n"):
        return event[:pos] + event[pos + len(_NULL_USAGE_END) - 1 :]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event
    if (
        isinstance(value, dict)
        and value.get("choices") == []
        and isinstance(value.get("usage"), dict)
    ):
        return b""
    return event


class UsageChunkFilter:
    """Called with each upstream chunk, returns what the client gets now;
    called with b"" at the end of the stream, returns what is left."""

    __slots__ = ("passing", "pending")

    def __init__(self) -> None:
        self.pending = b""
        self.passing = False  # inside an over-long event: pass it on until it ends

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of stream: what was held back, filtered like any event
            # (an event cut mid-JSON does not parse, so it goes out as it came)
            rest, self.pending = self.pending, b""
            return filter_event(rest) if rest and not self.passing else rest
        data = self.pending + chunk if self.pending else chunk
        out = b""
        if self.passing:
            end = _boundary_end(data)
            if not end:
                self.pending = data[-3:]  # a boundary may straddle chunks
                return data[:-3]
            first = _first_boundary_end(data)
            out, data = data[:first], data[first:]
            self.passing = False
        end = _boundary_end(data)
        complete, rest = data[:end], data[end:]
        if len(rest) > MAX_PENDING:
            self.passing = True
            self.pending = rest[-3:]
            return out + self._complete(complete) + rest[:-3]
        self.pending = rest
        return out + self._complete(complete)

    @staticmethod
    def _complete(data: bytes) -> bytes:
        if not data or _USAGE not in data:
            return data
        return b"".join(filter_event(e) for e in _split_events(data))


def _first_boundary_end(data: bytes) -> int:
    end = len(data)
    for sep in _BOUNDARIES:
        pos = data.find(sep)
        if pos >= 0 and pos + len(sep) < end:
            end = pos + len(sep)
    return end
