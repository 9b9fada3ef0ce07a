"""Property: whatever the upstream sends, however it is split, the client
hands on either the exact body with a clean end, or an error (`protocol`
for bad framing, `reset` for a cut) after at most a prefix of the body.
Never a partial body that ends cleanly, never a byte that was not body.

Responses are generated valid (status, headers, Content-Length, chunked or
read-until-close framing, interim 1xx, body), then possibly spoiled once: a
hostile header, conflicting lengths, a bad status or chunk line, or a cut.
"""

from __future__ import annotations

import asyncio
import itertools
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_upstream_framing import run

NAME = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=10).map(
    lambda s: ("X-" + s).encode()
)
VALUE = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80 or c == 0x09).strip(b"\t")
)
FIELDS = st.lists(st.tuples(NAME, VALUE), max_size=5)
CTL = st.sampled_from([0, 1, 8, 10, 11, 12, 13, 27, 31, 127])


@st.composite
def responses(draw):
    """(raw bytes, eof, expected body, expected error kind or None, reusable)."""
    framing = draw(st.sampled_from(["length", "chunked", "close", "empty"]))
    version = (
        b"HTTP/1.1"
        if framing == "chunked"
        else draw(st.sampled_from([b"HTTP/1.1"] * 3 + [b"HTTP/1.0"]))
    )
    status = (
        draw(st.sampled_from([204, 304]))
        if framing == "empty"
        else draw(st.sampled_from([200, 201, 400, 404, 429, 500]))
    )
    body = b"" if framing == "empty" else draw(st.binary(max_size=300))
    fields = [b"%s: %s\r\n" % f for f in draw(FIELDS)]
    interim = b"".join(
        draw(
            st.lists(
                st.sampled_from(
                    [
                        b"HTTP/1.1 100 Continue\r\n\r\n",
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                    ]
                ),
                max_size=3,
            )
        )
    )
    payload = body
    if framing in ("length", "empty"):
        if framing == "length" or draw(st.booleans()):
            fields.append(
                b"Content-Length: %d\r\n"
                % (len(body) if framing == "length" else draw(st.integers(0, 99)))
            )
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked\r\n")
        payload, i = b"", 0
        while i < len(body):
            n = draw(st.integers(1, 64))
            ext = draw(st.sampled_from([b"", b";a=b", b';q="x y"']))
            payload += b"%x%s\r\n%s\r\n" % (len(body[i : i + n]), ext, body[i : i + n])
            i += n
        trailers = b"".join(
            b"%s: %s\r\n" % f for f in draw(st.lists(st.tuples(NAME, VALUE), max_size=2))
        )
        payload += b"0\r\n" + trailers + b"\r\n"
    keep = framing != "close" and (
        version == b"HTTP/1.1" or b"Connection: keep-alive\r\n" in fields
    )
    spoil = draw(st.sampled_from([None] * 4 + ["field", "status", "framing", "cut", "chunk"]))
    reason = b"OK"
    error = None
    if spoil == "field":  # a control byte in a header name, value, or the reason phrase
        where = draw(st.sampled_from(["name", "value", "reason", "fold"]))
        ctl = bytes([draw(CTL)])
        if where == "reason":
            reason = b"O" + ctl + b"K"
        elif where == "fold":
            fields.insert(
                draw(st.integers(0, len(fields))),
                b"X-Fold: a\r\n" + draw(st.sampled_from([b" ", b"\t"])) + b"b\r\n",
            )
        else:
            fields.insert(
                draw(st.integers(0, len(fields))),
                b"X-A" + ctl + b"B: v\r\n" if where == "name" else b"X-A: v" + ctl + b"w\r\n",
            )
        error = "protocol"
    elif spoil == "status":
        status = draw(st.sampled_from([99, 101, 600, 999]))
        error = "protocol"
    elif spoil == "framing":
        extra = draw(
            st.sampled_from(
                [
                    b"Content-Length: 7\r\nTransfer-Encoding: chunked\r\n",
                    b"Content-Length: 1\r\nContent-Length: 2\r\n",
                    b"Transfer-Encoding: gzip, chunked\r\n",
                    b"Transfer-Encoding: gzip\r\n",
                ]
            )
        )
        fields.insert(draw(st.integers(0, len(fields))), extra)
        error = "protocol"
    head = interim + version + b" %d " % status + reason + b"\r\n" + b"".join(fields) + b"\r\n"
    raw = head + payload
    eof = "close" if framing == "close" else draw(st.sampled_from([None, "close"]))
    if spoil == "chunk" and framing == "chunked" and body:
        # Spoil one chunk-size line: the body is cut there, with an error.
        lines = payload.split(b"\r\n")
        bad = draw(st.sampled_from([b"zz", b"-1", b"0x1", b" 1", b"1 ", b""]))
        raw = (
            head
            + lines[0].replace(lines[0].split(b";")[0], bad, 1)
            + b"\r\n"
            + b"\r\n".join(lines[1:])
        )
        error, body = "protocol", b""
    elif spoil == "cut" and len(raw) > 1:
        raw = raw[: draw(st.integers(1, len(raw) - 1))]
        eof = draw(st.sampled_from(["close", "reset"]))
        if framing == "close" and eof == "close" and len(raw) >= len(head):
            body = raw[len(head) :]  # read-until-close: a clean close is the end
        else:
            error = "reset"
    if error is not None:
        keep = False
    return raw, eof, body, error, keep


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(0, 2000), max_size=4))
def test_exact_body_or_an_error_never_a_mix(response, cuts):
    raw, eof, body, error, keep = response
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    pieces = [raw[a:b] for a, b in itertools.pairwise(points) if b > a]
    outcome = asyncio.run(run(pieces, eof=eof))
    if error is None:
        assert outcome.error is None, outcome
        assert outcome.body == body and outcome.ended, outcome
        assert outcome.reusable is (keep and eof is None), outcome
    else:
        assert outcome.error is not None and outcome.error.kind == error, outcome
        assert not outcome.ended and not outcome.reusable, outcome
        assert body.startswith(outcome.body), outcome
