"""Response framing of the upstream client, byte by byte (RFC 9112 section 6.3).

Raw response bytes go straight into a `Connection` (the asyncio protocol),
split in two at every position: whatever the split, a response is either
framed exactly (body, clean end, reusable or not) or a `protocol` error that
aborts the connection. Socket-level behaviour is in test_upstream_reading.py
(and the pool and errors in test_upstream_pool.py, test_upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import pytest

from gateway.proxy.upstream import Connection, UpstreamError


class FakeTransport:
    """What `Connection` uses of a transport; records aborts."""

    def __init__(self) -> None:
        self.aborted = False
        self.closed = False
        self.paused = False

    def writelines(self, parts) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakePool:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def _forget(self, conn: Connection) -> None:
        pass


@dataclass
class Outcome:
    status: int | None  # None: no head
    headers: list[tuple[str, str]]
    body: bytes  # what read() handed out
    ended: bool  # read() returned b"": a clean end
    error: UpstreamError | None
    reusable: bool
    aborted: bool


async def run(pieces: list[bytes], eof: str | None = None, head_request: bool = False) -> Outcome:
    """Feed `pieces` as separate data_received calls (stopping once the
    connection aborted, as a real transport would), then optionally the
    end of the connection: "close" (clean EOF) or "reset"."""
    conn = Connection(FakePool(asyncio.get_running_loop()))  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    request = (b"POST / HTTP/1.1\r\n\r\n", b"", 30.0)
    head = conn.send(*request, head_request=True) if head_request else conn.send(*request)
    try:
        for piece in pieces:
            if transport.aborted:
                break
            conn.data_received(piece)
        if eof is not None and not transport.aborted:
            conn.connection_lost(None if eof == "close" else ConnectionResetError("reset"))
        return await collect(conn, head, transport)
    finally:
        conn.connection_lost(None)  # cancels the timers


async def collect(conn: Connection, head: asyncio.Future, transport: FakeTransport) -> Outcome:
    status, headers, body, ended, error = None, [], bytearray(), False, None
    if head.done():
        try:
            resp = head.result()
        except UpstreamError as exc:
            error = exc
        else:
            status, headers = resp.status, resp.headers
            while True:  # everything already fed: a read that would wait is the end
                task = asyncio.ensure_future(resp.read())
                await asyncio.sleep(0)
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    break
                if task.exception() is not None:
                    error = task.exception()  # type: ignore[assignment]
                    break
                data = task.result()
                if not data:
                    ended = True
                    break
                body += data
    return Outcome(status, headers, bytes(body), ended, error, conn.reusable, transport.aborted)


async def each_split(raw: bytes, **kwargs) -> list[tuple[int, Outcome]]:
    """`raw` whole, then split in two at every position."""
    return [(0, await run([raw], **kwargs))] + [
        (at, await run([raw[:at], raw[at:]], **kwargs)) for at in range(1, len(raw))
    ]


async def assert_framed(raw: bytes, body: bytes, reusable: bool = True, **kwargs) -> Outcome:
    outcome = None
    for at, outcome in await each_split(raw, **kwargs):
        assert outcome.error is None, (at, outcome.error)
        assert (outcome.body, outcome.ended) == (body, True), at
        assert (outcome.reusable, outcome.aborted) == (reusable, False), at
    assert outcome is not None
    return outcome


async def assert_rejected(raw: bytes, before_response: bool = True, body: bytes = b"", **kw):
    """A `protocol` error at every split, the connection aborted, and no
    clean end; at most the bytes before the fault were handed out."""
    for at, outcome in await each_split(raw, **kw):
        error = outcome.error
        assert error is not None and error.kind == "protocol", (at, outcome)
        assert error.before_response is before_response, at
        assert not outcome.ended and not outcome.reusable and outcome.aborted, at
        assert body.startswith(outcome.body), at


OK = b"HTTP/1.1 200 OK\r\n"


def with_length(body: bytes, extra: bytes = b"", start: bytes = OK) -> bytes:
    return start + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


# -- valid framing ------------------------------------------------------------------


async def test_content_length():
    outcome = await assert_framed(
        with_length(b'{"a":"b\\r\\n"}', b"X-Id: 1\r\n"), b'{"a":"b\\r\\n"}'
    )
    assert outcome.status == 200
    assert outcome.headers == [("X-Id", "1"), ("Content-Length", "13")]


async def test_header_whitespace_is_trimmed_and_obs_text_and_htab_kept():
    raw = OK + b"X-A:  a\tb \t\r\nX-B: caf\xe9\r\nContent-Length: 0\r\n\r\n"
    outcome = await assert_framed(raw, b"")
    assert outcome.headers[:2] == [("X-A", "a\tb"), ("X-B", "caf\xe9")]


async def test_chunked_with_extensions_and_trailers():
    raw = (
        OK + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'1;q="a;b c"\r\n \r\n'
        b"0006\r\nworld!\r\n"
        b"0;last\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
    )
    outcome = await assert_framed(raw, b"hello world!")
    assert ("Transfer-Encoding", "chunked") in outcome.headers
    assert ("X-Checksum", "abc") not in outcome.headers  # trailers are dropped


async def test_transfer_encoding_chunked_is_case_insensitive():
    await assert_framed(OK + b"Transfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", b"ok")


async def test_interim_responses_are_skipped():
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        + with_length(b"ok", b"X-Final: 1\r\n")
    )
    outcome = await assert_framed(raw, b"ok")
    assert outcome.headers == [("X-Final", "1"), ("Content-Length", "2")]


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_204_and_304_have_no_body_whatever_the_headers_say(head):
    await assert_framed(head, b"", reusable=True)


@pytest.mark.parametrize(
    "head",
    [
        OK + b"Content-Length: 5\r\n\r\n",
        OK + b"Transfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_answer_to_head_has_no_body(head):
    await assert_framed(head, b"", reusable=True, head_request=True)
    # ...and body bytes after it are not a body: the connection is retired.
    outcome = await run([head + b"hello"], head_request=True)
    assert (outcome.body, outcome.ended, outcome.reusable) == (b"", True, False)


async def test_body_until_close_ends_on_eof_and_a_reset_is_a_cut():
    raw = OK + b"Content-Type: text/plain\r\n\r\nfirst\r\n\r\nsecond"
    await assert_framed(raw, b"first\r\n\r\nsecond", reusable=False, eof="close")
    for at, outcome in await each_split(raw, eof="reset"):
        assert outcome.error is not None and outcome.error.kind == "reset", at
        assert not outcome.ended and b"first\r\n\r\nsecond".startswith(outcome.body), at


@pytest.mark.parametrize(
    ("raw", "keep"),
    [
        (with_length(b"ok", start=b"HTTP/1.0 200 OK\r\n"), False),
        (with_length(b"ok", b"Connection: keep-alive\r\n", b"HTTP/1.0 200 OK\r\n"), True),
        (with_length(b"ok", b"Connection: close\r\n"), False),
        (with_length(b"ok", b"Connection: keep-alive, close\r\n"), False),
    ],
)
async def test_keep_alive_follows_version_and_connection(raw, keep):
    await assert_framed(raw, b"ok", reusable=keep)


@pytest.mark.parametrize(
    "after",
    [b"X", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"\x00garbage"],
)
@pytest.mark.parametrize(
    "raw",
    [with_length(b"ok"), OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
)
async def test_bytes_after_a_complete_response_retire_the_connection(raw, after):
    for at, outcome in await each_split(raw + after):
        assert outcome.error is None, at
        assert (outcome.body, outcome.ended, outcome.reusable) == (b"ok", True, False), at
    # Arriving later, on the idle connection: the same.
    outcome = await run([raw, after])
    assert (outcome.body, outcome.ended, outcome.reusable) == (b"ok", True, False)


# -- ambiguous framing: a protocol error ---------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
        b"Content-Length: 2\r\nContent-Length: 5\r\n",
        b"Content-Length: 2\r\nContent-Length: 2\r\n",  # equal: still refused
        b"Content-Length: 2, 2\r\n",
        b"Content-Length: +2\r\n",
        b"Content-Length: 0x2\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: identity\r\n",
    ],
)
async def test_conflicting_or_unsupported_framing(fields):
    await assert_rejected(OK + fields + b"\r\n2\r\nok\r\n0\r\n\r\n")


async def test_transfer_encoding_in_http_1_0():
    await assert_rejected(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "field",
    [
        b"X-A: a\r\n b\r\n",  # obs-fold
        b"X-A: a\r\n\tb\r\n",
        b"X-A: a\nb\r\n",  # bare LF
        b"X-A: a\n",
        b"X-A: a\rb\r\n",  # bare CR
        b"X-A: a\x00b\r\n",
        b"X-A: a\x7fb\r\n",
        b"X-A: a\x01b\r\n",
        b"X-A: a\x1bb\r\n",
        b"X-A: a\x1f\r\n",
        b"X-\x00A: a\r\n",
        b"X-\x7fA: a\r\n",
        b"X-\x01A: a\r\n",
        b"X-\rA: a\r\n",
        b"X-\nA: a\r\n",
        b"X A: a\r\n",
        b"X-A : a\r\n",
        b": a\r\n",
        b"no colon\r\n",
    ],
)
async def test_bad_bytes_in_a_header(field):
    await assert_rejected(OK + field + b"Content-Length: 2\r\n\r\nok")


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 200 O\x00K\r\n",
        b"HTTP/1.1 200 O\x01K\r\n",
        b"HTTP/1.1 200 O\x7fK\r\n",
        b"HTTP/1.1 200 O\rK\r\n",
        b"HTTP/1.1 200 O\nK\r\n",
        b"HTTP/1.1 200 OK\n",
        b"HTTP/1.1 99 Too Low\r\n",
        b"HTTP/1.1 600 Too High\r\n",
        b"HTTP/1.1 999 Too High\r\n",
        b"HTTP/1.1 020 Padded\r\n",
        b"HTTP/1.1 2000 Long\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/2.0 200 OK\r\n",
        b"HTTP/0.9 200 OK\r\n",
        b"HTTP/1.2 200 OK\r\n",
        b"http/1.1 200 OK\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
async def test_bad_status_line(line):
    await assert_rejected(line + b"Content-Length: 2\r\n\r\nok")


async def test_too_many_interim_responses():
    await assert_framed(b"HTTP/1.1 100 Continue\r\n\r\n" * 16 + with_length(b"ok"), b"ok")
    await assert_rejected(b"HTTP/1.1 100 Continue\r\n\r\n" * 17 + with_length(b"ok"))


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 104 X\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_interim_response_with_a_length(interim):
    await assert_rejected(interim + with_length(b"ok"))


@pytest.mark.parametrize(
    ("bad", "good"),
    [
        (b"zz\r\n", b"hello"),
        (b"-5\r\nhello\r\n", b"hello"),
        (b"0x5\r\nhello\r\n", b"hello"),
        (b"5 \r\nhello\r\n", b"hello"),
        (b"5\nhello\r\n", b"hello"),
        (b"3\r\nabcX\r\n", b"helloabc"),
        (b"f" * 20 + b"\r\n", b"hello"),
        (b"0\r\nX-T: a\x00b\r\n\r\n", b"hello"),  # bad trailer
        (b"0\r\nX-T: a\r\n b\r\n\r\n", b"hello"),  # folded trailer
    ],
)
async def test_bad_chunk_after_good_ones(bad, good):
    raw = OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + bad
    await assert_rejected(raw, before_response=False, body=good)


# -- limits: memory stays bounded ---------------------------------------------------


async def fed_until_error(head: bytes, filler: bytes, piece: int = 1024) -> int:
    """Feed `head`, then `filler` a piece at a time; how many bytes were fed
    when the connection gave up (it must give up)."""
    pieces = [head] + [filler[i : i + piece] for i in range(0, len(filler), piece)]
    for n in range(1, len(pieces) + 1):
        outcome = await run(pieces[:n])
        if outcome.error is not None:
            assert outcome.error.kind == "protocol" and outcome.aborted
            return sum(map(len, pieces[:n]))
    raise AssertionError("never refused")


@pytest.mark.parametrize(
    "filler",
    [
        b"X-Big: " + b"a" * 200_000,  # one endless value
        b"X-" + b"n" * 200_000,  # one endless name
        b"X-Small: 1\r\n" * 20_000,  # many fields
    ],
)
async def test_a_huge_head_is_refused_early(filler):
    fed = await fed_until_error(OK, filler, piece=4096)
    assert fed <= 64 * 1024 + 8192


async def test_too_many_header_fields():
    await assert_rejected(OK + b"X-A: 1\r\n" * 300 + b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "filler",
    [
        b"X-T: " + b"t" * 200_000,  # one endless trailer field
        b"X-T: 1\r\n" * 20_000,  # many trailer fields
    ],
)
async def test_a_huge_trailer_is_refused(filler):
    head = OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    fed = await fed_until_error(head, filler, piece=4096)
    assert fed <= len(head) + 64 * 1024 + 8192


async def test_an_endless_chunk_extension_is_refused():
    head = OK + b"Transfer-Encoding: chunked\r\n\r\n5;x="
    fed = await fed_until_error(head, b"v" * 200_000, piece=4096)
    assert fed <= len(head) + 64 * 1024 + 8192


async def test_a_big_body_is_not_a_stall():
    body = bytes(range(256)) * 1024
    outcome = await run([with_length(body)[: 70 * 1024], with_length(body)[70 * 1024 :]])
    assert (outcome.body, outcome.ended, outcome.error) == (body, True, None)
