"""Content codings of request bodies: decoded in steps, never past the budget."""

from __future__ import annotations

import gzip
import zlib

import pytest

from gateway.errors import GatewayError
from gateway.proxy.request_body import MAX_CODINGS, _Inflater, parse_codings

TEXT = b'{"model": "up/m1", "messages": [{"role": "user", "content": "' + b"x" * 3000 + b'"}]}'


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def inflate_in_pieces(coding: str, data: bytes, cut: int, budget: int = 1 << 20) -> bytes:
    inflater = _Inflater(coding)
    out = inflater.feed(data[:cut], budget)
    out += inflater.feed(data[cut:], budget - len(out))
    inflater.finish()
    return out


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # what RFC 9110 calls deflate: the zlib format
        ("deflate", raw_deflate),  # what some clients send instead
    ],
)
def test_every_split_decodes_to_the_same_bytes(coding, encode):
    data = encode(TEXT)
    for cut in range(len(data) + 1):
        assert inflate_in_pieces(coding, data, cut) == TEXT


def test_concatenated_gzip_members_are_one_body():
    data = gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:])
    for cut in range(0, len(data) + 1, 7):
        assert inflate_in_pieces("gzip", data, cut) == TEXT


def test_output_past_the_budget_stops_without_inflating_the_rest():
    bomb = gzip.compress(b"\0" * (8 << 20))
    inflater = _Inflater("gzip")
    with pytest.raises(OverflowError):
        inflater.feed(bomb, 1000)


def test_exactly_the_budget_is_allowed():
    assert inflate_in_pieces("gzip", gzip.compress(TEXT), 10, budget=len(TEXT)) == TEXT
    with pytest.raises(OverflowError):
        inflate_in_pieces("gzip", gzip.compress(TEXT), 10, budget=len(TEXT) - 1)


@pytest.mark.parametrize(
    ("coding", "data", "detail"),
    [
        ("gzip", gzip.compress(TEXT)[:-5], "truncated"),
        ("gzip", b"", "truncated"),
        ("gzip", b"not gzip at all", "not valid gzip"),
        ("deflate", zlib.compress(TEXT) + b"trailing", "after the end"),
        ("gzip", gzip.compress(TEXT) + b"garbage!", "not valid gzip"),
    ],
)
def test_broken_data_is_a_400(coding, data, detail):
    inflater = _Inflater(coding)
    with pytest.raises(GatewayError) as info:
        inflater.feed(data, 1 << 20)
        inflater.finish()
    assert info.value.status == 400
    assert detail in info.value.message


def test_codings_are_undone_last_first_and_identity_is_nothing():
    assert parse_codings(None) == []
    assert parse_codings("identity") == []
    assert parse_codings("GZIP") == ["gzip"]
    assert parse_codings("deflate, gzip") == ["gzip", "deflate"]
    assert parse_codings(" gzip ,identity, x-gzip") == ["x-gzip", "gzip"]


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, br", "snappy"])
def test_unknown_coding_is_a_415_naming_it(header):
    with pytest.raises(GatewayError) as info:
        parse_codings(header)
    assert info.value.status == 415
    assert info.value.code == "unsupported_content_encoding"
    assert f"'{header.split(', ')[-1]}'" in info.value.message


def test_too_many_stacked_codings_is_a_415():
    parse_codings(", ".join(["gzip"] * MAX_CODINGS))
    with pytest.raises(GatewayError) as info:
        parse_codings(", ".join(["gzip"] * (MAX_CODINGS + 1)))
    assert info.value.status == 415


def test_a_hostile_coding_name_is_not_echoed_raw():
    with pytest.raises(GatewayError) as info:
        parse_codings("\x1b[31mred" + "y" * 500)
    assert "\x1b" not in info.value.message
    assert len(info.value.message) < 200
