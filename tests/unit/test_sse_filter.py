"""The opt-in stream usage filter: exactly the usage the gateway asked for comes out."""

from __future__ import annotations

import orjson
import pytest

from gateway.proxy.sse_filter import (
    MAX_PENDING,
    UsageChunkFilter,
    add_include_usage,
    wants_stream_usage,
)
from gateway.proxy.usage import UsageTail
from tests.support import SSE_FIXTURES, split_awkwardly


def run(chunks: list[bytes]) -> bytes:
    f = UsageChunkFilter()
    out = [f(c) for c in chunks]
    out.append(f(b""))
    return b"".join(out)


def without_usage_chunk(stream: bytes) -> bytes:
    """What the upstream sends when nobody asked for usage (built by hand)."""
    events = stream.split(b"\n\n")
    kept = [e for e in events if b'"choices":[],"usage":{' not in e]
    return b"\n\n".join(kept).replace(b',"usage":null}', b"}")


@pytest.mark.parametrize("name", ["vllm-usage.sse", "openai-usage-null.sse"])
@pytest.mark.parametrize("seed", range(12))
def test_the_usage_chunk_is_dropped_however_the_stream_is_split(name, seed):
    stream = (SSE_FIXTURES / name).read_bytes()
    expected = without_usage_chunk(stream)
    assert expected != stream and b'"usage"' not in expected
    assert run(split_awkwardly(stream, seed=seed, max_piece=1 + seed * 7)) == expected
    # The side copy still sees the upstream's bytes, usage chunk included.
    tail = UsageTail()
    for c in split_awkwardly(stream, seed=seed):
        tail.feed(c)
    assert tail.result()["prompt"] > 0


def test_crlf_and_no_space_streams():
    stream = (
        b'data:{"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\r\n\r\n'
        b'data:{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\r\n\r\n'
        b"data:[DONE]\r\n\r\n"
    )
    expected = (
        b'data:{"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\r\n\r\n'
        b"data:[DONE]\r\n\r\n"
    )
    for seed in range(8):
        assert run(split_awkwardly(stream, seed=seed, max_piece=5)) == expected


@pytest.mark.parametrize(
    "name",
    [
        "reasoning.sse",
        "tool-calls.sse",
        "nospace-crlf.sse",
        "midstream-error.sse",
        "multiline-fields.sse",
        "usage-on-final-delta.sse",  # usage on a chunk with choices: not the extra chunk
        "openrouter-keepalive.sse",
        "responses-text.sse",
        "messages-text.sse",
    ],
)
def test_other_streams_pass_byte_for_byte(name):
    stream = (SSE_FIXTURES / name).read_bytes()
    for seed in range(4):
        assert run(split_awkwardly(stream, seed=seed)) == stream


def test_an_event_it_cannot_parse_passes_unchanged():
    stream = (
        b'data: {"choices": [], "usage": {"prompt_tokens": 1, \n\n'  # cut JSON
        b'data: {"choices": [], "usage": null}\n\n'  # no usage object
        b'event: x\ndata: "usage"\n\n'
        b': a comment mentioning "usage"\n\n'
    )
    assert run(split_awkwardly(stream, seed=1, max_piece=7)) == stream


def test_a_stream_cut_mid_event_gets_its_bytes():
    stream = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choi'
    assert run([stream[:10], stream[10:]]) == stream


def test_an_over_long_event_is_not_held_back():
    """The buffer is bounded: a huge event flows on as it comes."""
    stream = (SSE_FIXTURES / "huge-line.sse").read_bytes()
    f = UsageChunkFilter()
    out = []
    for c in split_awkwardly(stream, seed=2, max_piece=8192):
        out.append(f(c))
        assert len(f.pending) <= MAX_PENDING + 8192
    out.append(f(b""))
    assert b"".join(out) == stream


def test_usage_after_a_huge_event_is_still_dropped():
    big = b'data: {"choices":[{"delta":{"content":"' + b"x" * (MAX_PENDING * 2) + b'"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    done = b"data: [DONE]\n\n"
    chunks = [big[i : i + 4096] for i in range(0, len(big), 4096)] + [usage, done]
    assert run(chunks) == big + done


def test_wants_stream_usage():
    chat = "chat/completions"
    assert wants_stream_usage(chat, {"stream": True})
    assert wants_stream_usage("completions", {"stream": True})
    assert wants_stream_usage(chat, {"stream": True, "stream_options": {"include_usage": False}})
    assert not wants_stream_usage(chat, {"stream": False})
    assert not wants_stream_usage(chat, {})
    assert not wants_stream_usage("embeddings", {"stream": True})
    assert not wants_stream_usage(chat, {"stream": True, "stream_options": {"include_usage": True}})
    # Other options are the client's business: left as written.
    assert not wants_stream_usage(
        chat, {"stream": True, "stream_options": {"continuous_usage_stats": True}}
    )


def test_add_include_usage_is_one_edit():
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"\\u00e9"}]}'
    edited = add_include_usage(body, orjson.loads(body))
    assert edited == (
        b'{"stream_options":{"include_usage":true},"model":"m","stream":true,'
        b'"messages":[{"role":"user","content":"\\u00e9"}]}'
    )
    body = b'  {"model":"m","stream":true,"stream_options":{"include_usage":false}}'
    edited = orjson.loads(add_include_usage(body, orjson.loads(body)))
    assert edited == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
