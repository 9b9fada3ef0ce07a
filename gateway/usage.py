"""Token usage read from a side copy of an answer, parsed once at its end.

The relay hands every body chunk of a 2xx answer to `UsageTail.feed` by
reference: no copy and no parsing per chunk, just an append and a length
sum. It keeps the first bytes (Anthropic's `message_start` carries the
prompt's tokens there) and a tail of the newest bytes, where every other
shape puts its usage: the usage-only final chunk of a chat stream (vLLM,
OpenAI's `choices: []`), usage on the final `delta: {}` chunk, Responses'
`response.completed`, Anthropic's `message_delta`, and the end of a JSON
answer (chat, completions, embeddings, Responses, Messages).

`result()` decodes the last `"usage"` object in the tail once. Usage that is
absent, `null`, malformed or cut off is "unknown" (an empty dict): never
guessed, and never a reason to change what the client gets.
"""

from __future__ import annotations

from collections import deque
from json import JSONDecoder

HEAD_BYTES = 4096  # `message_start` comes first and is small
# Kept before the newest chunk: a usage event and what follows it are a few
# hundred bytes, and this is held for every stream in flight.
TAIL_BYTES = 4096
_USAGE_SPAN = 4096  # a usage object is a few hundred bytes; decode no more than this
_MAX_CANDIDATES = 8  # `"usage"` occurrences looked at, newest first
_MAX_TOKENS = 1 << 53  # above this a count is nonsense (and loses precision as a float)

KINDS = ("prompt", "completion", "cached_prompt", "reasoning")

_decoder = JSONDecoder()
_KEY = b'"usage"'
_SPACE = b" \t\r\n"


class UsageTail:
    """The first and the newest bytes of one answer, kept by reference."""

    __slots__ = ("dropped", "head", "head_size", "tail", "tail_size")

    def __init__(self) -> None:
        self.head: list[bytes] = []
        self.head_size = 0
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = False  # a tail chunk was let go: head and tail are not contiguous

    def feed(self, chunk: bytes) -> None:
        """Keep a reference to `chunk`; let go of tail chunks no longer needed."""
        if self.head_size < HEAD_BYTES:
            self.head.append(chunk)
            self.head_size += len(chunk)
            return
        self.tail.append(chunk)
        n = len(chunk)
        self.tail_size += n
        # Trimmed only once twice the bytes needed pile up: most chunks cost
        # an append and two additions.
        if self.tail_size - n >= 2 * TAIL_BYTES:
            self._trim(n)

    def _trim(self, newest: int) -> None:
        """Drop the oldest chunks while TAIL_BYTES remain before the newest one."""
        tail, size = self.tail, self.tail_size
        while size - len(tail[0]) - newest >= TAIL_BYTES:
            size -= len(tail.popleft())
            self.dropped = True
        self.tail_size = size

    def result(self) -> dict[str, int]:
        """Token counts by kind (those the upstream reported); {} for unknown."""
        head = b"".join(self.head)
        if self.dropped:
            usage = _last_usage(b"".join(self.tail))
        else:  # the whole body is here: search it as one
            usage = _last_usage(head + b"".join(self.tail) if self.tail else head)
        if not isinstance(usage, dict):
            return {}
        if "input_tokens" not in usage and "output_tokens" in usage:
            # Anthropic's message_delta: the prompt's tokens are in message_start.
            start = _first_usage(head)
            if isinstance(start, dict):
                usage = {**start, "output_tokens": usage["output_tokens"]}
        return counts(usage)


def counts(usage: dict) -> dict[str, int]:
    """The kinds of tokens in one usage object, whichever API's shape it has."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        # Chat and completions (JSON and SSE), embeddings (prompt only).
        found = {
            "prompt": usage.get("prompt_tokens"),
            "completion": usage.get("completion_tokens"),
            "cached_prompt": _detail(usage, "prompt_tokens_details", "cached_tokens"),
            "reasoning": _detail(usage, "completion_tokens_details", "reasoning_tokens"),
        }
    elif "input_tokens_details" in usage or "output_tokens_details" in usage:
        # Responses: input_tokens already includes the cached ones.
        found = {
            "prompt": usage.get("input_tokens"),
            "completion": usage.get("output_tokens"),
            "cached_prompt": _detail(usage, "input_tokens_details", "cached_tokens"),
            "reasoning": _detail(usage, "output_tokens_details", "reasoning_tokens"),
        }
    else:
        # Messages: input_tokens leaves out cache reads and writes; the prompt
        # is all three, so that cached_prompt <= prompt as for the others.
        parts = [
            usage.get(k)
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        ]
        valid = [n for n in parts if _valid(n)]
        found = {
            "prompt": sum(valid) if _valid(parts[0]) else None,
            "completion": usage.get("output_tokens"),
            "cached_prompt": usage.get("cache_read_input_tokens"),
        }
    out = {kind: n for kind, n in found.items() if _valid(n)}
    return out if ("prompt" in out or "completion" in out) else {}


def _valid(n: object) -> bool:
    return type(n) is int and 0 <= n < _MAX_TOKENS


def _detail(usage: dict, field: str, key: str) -> object:
    details = usage.get(field)
    return details.get(key) if isinstance(details, dict) else None


def _last_usage(buf: bytes) -> object:
    """The value of the newest `"usage":` key in `buf`, or None."""
    end = len(buf)
    for _ in range(_MAX_CANDIDATES):
        pos = buf.rfind(_KEY, 0, end)
        if pos < 0:
            return None
        value = _value_at(buf, pos)
        if value is not _NOT_A_KEY:
            return value  # the newest usage decides, even when it is null or cut
        end = pos
    return None


def _first_usage(buf: bytes) -> object:
    start = 0
    for _ in range(_MAX_CANDIDATES):
        pos = buf.find(_KEY, start)
        if pos < 0:
            return None
        value = _value_at(buf, pos)
        if value is not _NOT_A_KEY:
            return value
        start = pos + 1
    return None


_NOT_A_KEY = object()


def _value_at(buf: bytes, pos: int) -> object:
    """Decode the value after the key at `pos`; None when it does not decode."""
    i = pos + len(_KEY)
    span = buf[i : i + _USAGE_SPAN].lstrip(_SPACE)
    if not span.startswith(b":"):
        return _NOT_A_KEY  # text that only looks like the key
    text = span[1:].decode("utf-8", "replace")
    try:
        value, _ = _decoder.raw_decode(text, len(text) - len(text.lstrip()))
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        return None
    return value
