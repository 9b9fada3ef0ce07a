"""Token usage from the side copy: every shape real servers send, split anywhere."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.proxy.body import Pipe
from gateway.proxy.usage import HEAD_BYTES, TAIL_BYTES, TRIM_AT, UsageTail
from gateway.tracing import _model_in
from tests.support import split_awkwardly

FIXTURES = Path("/work/shared/fixtures/sse")

# fixture -> the counts its usage reports
EXPECTED = {
    "vllm-usage.sse": {"prompt": 12, "completion": 6},
    "usage-on-final-delta.sse": {"prompt": 11, "completion": 2},
    "openai-usage-null.sse": {
        "prompt": 19,
        "completion": 10,
        "cached_prompt": 0,
        "reasoning": 0,
    },
    "responses-text.sse": {"prompt": 42, "completion": 9, "cached_prompt": 32, "reasoning": 0},
    "responses-reasoning-tool.sse": {
        "prompt": 88,
        "completion": 31,
        "cached_prompt": 0,
        "reasoning": 17,
    },
    # Anthropic: input_tokens + cache reads + cache writes from message_start,
    # output_tokens from message_delta.
    "messages-text.sse": {"prompt": 37, "completion": 15, "cached_prompt": 12},
    "messages-thinking-tool.sse": {"prompt": 472, "completion": 89, "cached_prompt": 0},
}
# Streams that carry no usage at all (the client did not ask for it, or an error).
NO_USAGE = ["reasoning.sse", "midstream-error.sse", "nospace-crlf.sse", "tool-calls.sse"]


def read(chunks) -> dict[str, int]:
    tail = UsageTail()
    for chunk in chunks:
        tail.feed(chunk)
    return tail.result()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_shapes(name):
    data = (FIXTURES / name).read_bytes()
    assert read([data]) == EXPECTED[name]
    for seed in range(3):
        assert read(split_awkwardly(data, seed=seed, max_piece=7)) == EXPECTED[name]


@pytest.mark.parametrize("name", NO_USAGE)
def test_streams_without_usage_are_unknown(name):
    data = (FIXTURES / name).read_bytes()
    assert read(split_awkwardly(data, seed=1)) == {}


@pytest.mark.parametrize("name", ["vllm-usage.sse", "messages-text.sse"])
def test_split_at_every_position(name):
    data = (FIXTURES / name).read_bytes()
    for i in range(len(data) + 1):
        assert read([data[:i], data[i:]]) == EXPECTED[name], i


FILLER = b'data: {"choices":[{"index":0,"delta":{"content":"xxxxxxxxxxxxxxxx"}}]}\n\n'


def padded(data: bytes, size: int) -> bytes:
    """`data` after at least `size` bytes of content events."""
    return FILLER * (size // len(FILLER) + 1) + data


def test_long_streams_keep_head_and_tail():
    # message_start in the head, message_delta far beyond it: old bytes dropped.
    messages = (FIXTURES / "messages-text.sse").read_bytes()
    start, _, rest = messages.partition(b"\n\n")
    long = start + b"\n\n" + padded(rest, 20 * (HEAD_BYTES + TAIL_BYTES))
    tail = UsageTail()
    for chunk in split_awkwardly(long, seed=3, max_piece=300):
        tail.feed(chunk)
        assert sum(map(len, tail.chunks or ())) < TRIM_AT  # bounded after every chunk
    assert tail.head == long[:HEAD_BYTES]
    kept = b"".join(tail.chunks)
    assert kept == long[-len(kept) :] and len(kept) >= TAIL_BYTES
    assert tail.result() == EXPECTED["messages-text.sse"]
    # A chat stream whose early `usage: null` is long gone still reads its final usage.
    chat = padded((FIXTURES / "openai-usage-null.sse").read_bytes(), 50_000)
    assert read(split_awkwardly(chat, max_piece=500)) == EXPECTED["openai-usage-null.sse"]


def test_a_whole_answer_is_kept_by_reference():
    tail = UsageTail()
    body = json_answer({"prompt_tokens": 3, "completion_tokens": 4})
    tail.feed(body)
    assert tail.first is body and tail.chunks is None
    assert tail.result() == {"prompt": 3, "completion": 4}


def test_chunks_are_kept_by_reference_until_cut():
    tail = UsageTail()
    first, later = b"x" * 100, b"y" * 100
    tail.feed(first)
    tail.feed(later)
    assert tail.chunks[0] is first and tail.chunks[1] is later
    big = b"[" + b"z" * (4 * TRIM_AT) + b"]"
    tail.feed(big)  # past TRIM_AT: cut to the newest bytes
    assert tail.head == b"", "no usage object and no model: none of the head is kept"
    assert tail.chunks == [big[-TAIL_BYTES:]]
    tail.feed(b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}')
    assert tail.result() == {"prompt": 1, "completion": 2}


def test_a_long_chat_stream_keeps_of_its_head_only_the_model():
    # Kept whole, 4 KiB of every stream in flight were held for nothing.
    chat = padded((FIXTURES / "openai-usage-null.sse").read_bytes(), 3 * TRIM_AT)
    first = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini"}\n\n'
    tail = UsageTail()
    for chunk in split_awkwardly(first + chat, seed=2, max_piece=400):
        tail.feed(chunk)
    assert tail.head is not None and len(tail.head) < 400
    assert _model_in(tail.start()) == "gpt-4o-mini"
    assert tail.result() == EXPECTED["openai-usage-null.sse"]


def test_a_head_with_a_usage_object_is_kept_whole():
    # Anthropic's message_start: the prompt's tokens, read at the end.
    start = b'event: message_start\ndata: {"type":"message_start","message":{"model":"m",'
    start += b'"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
    data = start + padded(b'data: {"usage":{"output_tokens":9}}\n\n', 3 * TRIM_AT)
    tail = UsageTail()
    for chunk in split_awkwardly(data, seed=4, max_piece=500):
        tail.feed(chunk)
    assert tail.head == data[:HEAD_BYTES]
    assert tail.result() == {"prompt": 7, "completion": 9}


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.out += part


class _Client:  # aiohttp's protocol as Pipe reads it
    def __init__(self) -> None:
        self.transport = _Transport()
        self._paused = False


class _Conn:
    def stop_reading(self) -> None:
        raise AssertionError("the client is never behind here")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_relay_appends_what_feed_would(name):
    # Pipe.deliver appends to the side copy itself once it has a buffer:
    # the same counts as feed(), for reads of one piece and of several.
    data = padded((FIXTURES / name).read_bytes(), 3 * TRIM_AT)
    if name.startswith("messages"):  # message_start must stay first
        start, _, rest = (FIXTURES / name).read_bytes().partition(b"\n\n")
        data = start + b"\n\n" + padded(rest, 3 * TRIM_AT)
    for seed in range(3):
        tail, client = UsageTail(), _Client()
        pipe = Pipe(_Conn(), client, True, tail, None)  # type: ignore[arg-type]
        pieces = split_awkwardly(data, seed=seed, max_piece=700)
        per_read = 1 + seed  # reads of one, two and three pieces
        for i in range(0, len(pieces), per_read):
            pipe.deliver(pieces[i : i + per_read])
        assert tail.result() == EXPECTED[name]
        assert sum(map(len, tail.chunks)) < TRIM_AT + per_read * 700  # cut as it went
        assert _unchunk(bytes(client.transport.out)) == data
        assert pipe.nbytes == len(data)


def _unchunk(framed: bytes) -> bytes:
    out, at = bytearray(), 0
    while at < len(framed):
        line_end = framed.index(b"\r\n", at)
        size = int(framed[at:line_end], 16)
        assert size, "Pipe never writes the last-chunk"
        out += framed[line_end + 2 : line_end + 2 + size]
        assert framed[line_end + 2 + size : line_end + 4 + size] == b"\r\n"
        at = line_end + 4 + size
    return bytes(out)


def json_answer(usage: object, **extra: object) -> bytes:
    return orjson.dumps({"id": "x", **extra, "usage": usage})


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # chat/completions JSON with cached and reasoning tokens (OpenAI's shape)
        (
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920},
                "completion_tokens_details": {"reasoning_tokens": 192},
            },
            {"prompt": 2006, "completion": 300, "cached_prompt": 1920, "reasoning": 192},
        ),
        # embeddings
        ({"prompt_tokens": 8, "total_tokens": 8}, {"prompt": 8}),
        # Responses JSON
        (
            {
                "input_tokens": 5,
                "input_tokens_details": {"cached_tokens": 1},
                "output_tokens": 7,
                "output_tokens_details": {"reasoning_tokens": 3},
                "total_tokens": 12,
            },
            {"prompt": 5, "completion": 7, "cached_prompt": 1, "reasoning": 3},
        ),
        # Messages JSON
        (
            {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 2},
            {"prompt": 14, "completion": 2, "cached_prompt": 4},
        ),
        # Responses without details (some servers): input and output only
        ({"input_tokens": 3, "output_tokens": 4}, {"prompt": 3, "completion": 4}),
        # A details object of the wrong type is left out, the rest counts.
        (
            {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": [1]},
            {"prompt": 3, "completion": 1},
        ),
    ],
)
def test_json_answers(usage, expected):
    big = {"choices": [{"message": {"content": "z" * 30_000}}]}
    assert read([json_answer(usage)]) == expected
    assert read(split_awkwardly(json_answer(usage, **big), max_piece=1000)) == expected


def test_a_json_answer_counts_its_own_usage():
    # A small answer is parsed whole: its top-level usage counts, not one
    # nested after it (the search from the end would find that one first).
    body = orjson.dumps(
        {"usage": {"prompt_tokens": 3, "completion_tokens": 4}, "meta": {"usage": {"x": 1}}}
    )
    assert read([body]) == {"prompt": 3, "completion": 4}
    assert read([b" " + body]) == {}  # not parsed whole: the newest usage, {"x": 1}


def test_pretty_printed_json():
    body = orjson.dumps(
        {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, option=orjson.OPT_INDENT_2
    )
    assert b'"usage": {' in body
    assert read([body]) == {"prompt": 3, "completion": 4}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json at all",
        json_answer(None),
        json_answer("lots"),
        json_answer({}),
        json_answer({"prompt_tokens": "12", "completion_tokens": -1}),
        json_answer({"prompt_tokens": True}),
        b'{"usage": {"prompt_tokens": 1000000000000000000000000000000}}',
        json_answer({"prompt_tokens": 1.5}),
        b'{"usage": {"prompt_tokens": 12, "completion_tok',  # cut mid-object
        b'{"usage": ',
        b'{"usage"',
        b'{"usage": \xff\xfe{"prompt_tokens": 1}}',
        b'{"text": "\\"usage\\": {\\"prompt_tokens\\": 5}"}',  # only inside a string
        b'{"usage": {"prompt_tokens": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[',
        b'{"usage": ' + b"[" * 4000 + b"]" * 4000 + b"}",
    ],
)
def test_malformed_or_missing_is_unknown(body):
    assert read([body]) == {}


def test_stream_cut_mid_usage_event_is_unknown():
    for name in ("vllm-usage.sse", "openai-usage-null.sse", "responses-text.sse"):
        data = (FIXTURES / name).read_bytes()
        cut = data[: data.rindex(b'"usage"') + 30]
        assert read(split_awkwardly(cut, seed=2)) == {}, name


def test_messages_delta_without_message_start():
    delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
    assert read([delta]) == {"completion": 15}


def test_messages_delta_with_cumulative_input():
    # Newer Anthropic servers repeat the input counts in message_delta.
    start = b'data: {"type":"message_start","message":{"usage":{"input_tokens":1}}}\n\n'
    delta = (
        b'data: {"type":"message_delta","usage":{"input_tokens":9,'
        b'"cache_read_input_tokens":2,"output_tokens":15}}\n\n'
    )
    assert read([start, delta]) == {"prompt": 11, "completion": 15, "cached_prompt": 2}


def test_metrics_tokens_merge_across_workers():
    from gateway.metrics import Metrics
    from tests.unit.test_metrics import samples

    a, b = Metrics(), Metrics()
    a.tokens("up", "m1", "team-a", {"prompt": 10, "completion": 2, "reasoning": 1})
    a.tokens("up", "m1", "team-a", {})
    b.tokens("up", "m1", "team-a", {"prompt": 5, "cached_prompt": 3})
    b.tokens("up", "m2", "anonymous", {"prompt": 1})
    b.tokens("other", "m9", "anonymous", {})
    assert a.token_totals() == {"up": {"prompt": 10, "completion": 2, "reasoning": 1}}
    a.peers = lambda: [b.state()]
    got = samples(a)

    def key(model, kind, client):
        labels = {"provider": "up", "model": model, "kind": kind, "client": client}
        return ("gateway_tokens_total", tuple(sorted(labels.items())))

    assert got[key("m1", "prompt", "team-a")] == 15
    assert got[key("m1", "cached_prompt", "team-a")] == 3
    assert got[key("m2", "prompt", "anonymous")] == 1
    missing = "gateway_requests_without_usage_total"
    assert got[(missing, (("provider", "up"),))] == 1
    assert got[(missing, (("provider", "other"),))] == 1
    merged = Metrics()
    merged.add_state(a.state())
    merged.add_state(b.state())
    assert merged.token_totals() == {
        "up": {"prompt": 16, "completion": 2, "reasoning": 1, "cached_prompt": 3},
    }
    assert merged.requests_without_usage == {"up": 1, "other": 1}
    # A state from a worker without usage figures still merges.
    old = b.state()
    del old["tokens"], old["requests_without_usage"]
    merged.add_state(old)
    assert merged.token_totals()["up"]["prompt"] == 16
