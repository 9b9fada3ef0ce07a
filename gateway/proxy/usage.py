"""Token usage read from a side copy of an answer, parsed once at its end.

The relay hands every body chunk of a 2xx answer to the side copy by
reference, with no parsing per chunk: an append, and a cut once TRIM_AT
bytes have piled up, down to the newest TAIL_BYTES. The first cut keeps the
first HEAD_BYTES apart (Anthropic's `message_start` carries the prompt's
tokens there), or, when they hold no usage object, only as far as the
first model name (tracing's response model): a few hundred bytes of a chat
stream, not 4 KiB per stream in flight. The newest bytes are where every
other shape puts its usage: the usage-only final chunk of a chat stream (vLLM,
OpenAI's `choices: []`), usage on the final `delta: {}` chunk, Responses'
`response.completed`, Anthropic's `message_delta`, and the end of a JSON
answer (chat, completions, embeddings, Responses, Messages).

`result()` decodes the last `"usage"` object in the tail once. Usage that is
absent, `null`, malformed or cut off is "unknown" (an empty dict): never
guessed, and never a reason to change what the client gets.
"""

from __future__ import annotations

from json import JSONDecoder

import orjson

HEAD_BYTES = 4096  # `message_start` comes first and is small
# Of a head that holds no usage object, what is kept past its first `"model"`
# key: the key, its colon and spaces, and a name of up to 256 bytes (tracing.py).
_MODEL_ROOM = 300
# The newest bytes kept: a usage event and what follows it are a few hundred
# bytes, and up to TRIM_AT is held for every stream in flight.
TAIL_BYTES = 4096
TRIM_AT = 2 * TAIL_BYTES  # a name: the product would be computed per chunk
_USAGE_SPAN = 4096  # a usage object is a few hundred bytes; decode no more than this
_MAX_CANDIDATES = 8  # `"usage"` occurrences looked at, newest first
_MAX_TOKENS = 1 << 53  # above this a count is nonsense (and loses precision as a float)

KINDS = ("prompt", "completion", "cached_prompt", "reasoning")

_decoder = JSONDecoder()
_KEY = b'"usage"'
_SPACE = b" \t\r\n"


class UsageTail:
    """The first and the newest bytes of one answer, kept by reference."""

    __slots__ = ("chunks", "cut_at", "fed", "first", "head")

    def __init__(self) -> None:
        self.first: bytes | None = None  # the first chunk
        # From the second chunk on: the chunks since the last cut, the first
        # included. Pipe.deliver appends to it itself, and cuts it when its
        # own count of the body's bytes reaches cut_at: a feed() call per
        # relayed chunk was a third of the relay's instructions per chunk
        # (callgrind). A list of references, not a bytearray: growing and
        # shrinking one cost more in realloc and memmove than it saved (perf).
        self.chunks: list[bytes] | None = None
        self.fed = 0  # the body's bytes so far, as feed() counts them
        self.cut_at = TRIM_AT  # the body's length at which the chunks are cut next
        # What is read later of the first HEAD_BYTES (_needed), set by the
        # first cut (None: the chunks are the whole body).
        self.head: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        """Take the answer's next chunk."""
        fed = self.fed = self.fed + len(chunk)
        chunks = self.chunks
        if chunks is None:
            first = self.first
            if first is None:
                self.first = chunk
                return
            chunks = self.chunks = [first]
        chunks.append(chunk)
        if fed >= self.cut_at:
            self.cut(fed)

    def cut(self, length: int) -> None:
        """Keep the newest TAIL_BYTES of the chunks, and the first time what
        is needed of the first HEAD_BYTES; `length` is the body's length so far."""
        chunks = self.chunks
        assert chunks is not None  # feed() made it
        data = b"".join(chunks)
        if self.head is None:
            self.head = _needed(data[:HEAD_BYTES])
        chunks[:] = (data[-TAIL_BYTES:],)
        self.cut_at = length + TRIM_AT - TAIL_BYTES

    def _kept(self) -> bytes | None:
        """The bytes kept, as one: joined once, the join kept in their place
        (result() and, for a traced request, start() both ask)."""
        chunks = self.chunks
        if chunks is None:
            return self.first
        if len(chunks) > 1:
            chunks[:] = (b"".join(chunks),)
        return chunks[0]

    def start(self) -> bytes | None:
        """The answer's first bytes, as far as their readers need them (cut())."""
        return self.head if self.head is not None else self._kept()

    def result(self) -> dict[str, int]:
        """Token counts by kind (those the upstream reported); {} for unknown."""
        newest = self._kept()
        if newest is None:
            return {}
        usage = _NOT_A_KEY
        if self.head is None and len(newest) <= TRIM_AT and newest.startswith(b"{"):
            # A JSON answer, whole and small (most are): one orjson call on
            # all of it costs less than finding the usage object in it, a
            # third as much for OpenAI's nested `*_tokens_details`.
            try:
                answer = orjson.loads(newest)
            except orjson.JSONDecodeError:
                pass  # cut short, or not JSON after all: searched below
            else:
                usage = answer.get("usage") if type(answer) is dict else None
        if usage is _NOT_A_KEY:
            usage = _last_usage(newest)
        if type(usage) is not dict:
            return {}
        if "input_tokens" not in usage and "output_tokens" in usage:
            # Anthropic's message_delta: the prompt's tokens are in message_start.
            start = _first_usage(self.head if self.head is not None else newest)
            if isinstance(start, dict):
                usage = {**start, "output_tokens": usage["output_tokens"]}
        return counts(usage)


def _needed(head: bytes) -> bytes:
    """What is read later of an answer's first bytes: all of them when they
    hold a usage object (Anthropic's `message_start`: the prompt's tokens),
    else up to the first model name, and nothing without one. Once per
    answer longer than TRIM_AT; 5,000 streams kept 4 KiB each before."""
    if type(_first_usage(head)) is dict:
        return head
    i = head.find(b'"model"')
    return b"" if i < 0 else head[: i + _MODEL_ROOM]


def counts(usage: dict) -> dict[str, int]:
    """The kinds of tokens in one usage object, whichever API's shape it has.

    Runs once per answer on the hot path: the checks are written out rather
    than called (`_valid`), a call each was a measurable share."""
    get = usage.get
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        # Chat and completions (JSON and SSE), embeddings (prompt only).
        prompt, completion = get("prompt_tokens"), get("completion_tokens")
        cached, reasoning = get("prompt_tokens_details"), get("completion_tokens_details")
    elif "input_tokens_details" in usage or "output_tokens_details" in usage:
        # Responses: input_tokens already includes the cached ones.
        prompt, completion = get("input_tokens"), get("output_tokens")
        cached, reasoning = get("input_tokens_details"), get("output_tokens_details")
    else:
        return _messages_counts(usage)
    out = {}
    if type(prompt) is int and 0 <= prompt < _MAX_TOKENS:
        out["prompt"] = prompt
    if type(completion) is int and 0 <= completion < _MAX_TOKENS:
        out["completion"] = completion
    if out:
        if type(cached) is dict:
            n = cached.get("cached_tokens")
            if type(n) is int and 0 <= n < _MAX_TOKENS:
                out["cached_prompt"] = n
        if type(reasoning) is dict:
            n = reasoning.get("reasoning_tokens")
            if type(n) is int and 0 <= n < _MAX_TOKENS:
                out["reasoning"] = n
    return out


def _messages_counts(usage: dict) -> dict[str, int]:
    """Messages: input_tokens leaves out cache reads and writes; the prompt is
    all three, so that cached_prompt <= prompt as for the others."""
    get = usage.get
    prompt = get("input_tokens")
    if _valid(prompt):
        for k in ("cache_read_input_tokens", "cache_creation_input_tokens"):
            n = get(k)
            if _valid(n):
                prompt += n
    out = {}
    if _valid(prompt):
        out["prompt"] = prompt
    completion, cached = get("output_tokens"), get("cache_read_input_tokens")
    if _valid(completion):
        out["completion"] = completion
    if out and _valid(cached):
        out["cached_prompt"] = cached
    return out


def _valid(n: object) -> bool:
    return type(n) is int and 0 <= n < _MAX_TOKENS


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
_MAX_NESTING = 8  # `}` looked at before handing over to the general decoder


def _after_colon(buf: bytes, at: int) -> int:
    """Where the value starts after `"usage"` ending at `at`, spaces around the
    colon skipped; -1 when no colon follows."""
    rest = buf[at : at + _USAGE_SPAN]
    stripped = rest.lstrip(_SPACE)
    if not stripped.startswith(b":"):
        return -1
    at += len(rest) - len(stripped) + 1
    rest = buf[at : at + _USAGE_SPAN]
    return at + len(rest) - len(rest.lstrip(_SPACE))


def _value_at(buf: bytes, pos: int) -> object:
    """Decode the value after the key at `pos`; None when it does not decode.

    A usage object is small and flat or nested once (`*_tokens_details`):
    it is cut out at the `}` that balances its braces and handed to orjson,
    which costs a fraction of decoding text with `json` (this runs for every
    answer). Anything else, such as a brace inside a string, takes the
    general decoder, bounded by _USAGE_SPAN."""
    start = pos + len(_KEY) + 1
    if not buf.startswith(b":{", start - 1):  # compact JSON has none of the spaces
        start = _after_colon(buf, start - 1)
        if start < 0:
            return _NOT_A_KEY  # text that only looks like the key
    if buf.startswith(b"{", start):
        end = buf.find(b"}", start)
        if 0 <= end - start <= _USAGE_SPAN and buf.find(b"{", start + 1, end) < 0:
            try:  # flat, as most are: no brace counting
                return orjson.loads(buf[start : end + 1])
            except orjson.JSONDecodeError:
                pass
        for _ in range(_MAX_NESTING):
            if end < 0 or end - start > _USAGE_SPAN:
                return None  # cut off, or not a usage object
            if buf.count(b"{", start, end) == buf.count(b"}", start, end) + 1:
                try:
                    return orjson.loads(buf[start : end + 1])
                except orjson.JSONDecodeError:
                    break
            end = buf.find(b"}", end + 1)
    text = buf[start : start + _USAGE_SPAN].decode("utf-8", "replace")
    try:
        value, _ = _decoder.raw_decode(text)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        return None
    return value
