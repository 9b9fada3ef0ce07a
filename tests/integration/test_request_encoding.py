"""Compressed request bodies through a real gateway: decoded, bounded, labelled right."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.integration.test_cli import background, free_ports
from tests.support import write_config

CHAT = orjson.dumps({"model": "up/m1", "messages": [{"role": "user", "content": "hi " * 500}]})
REWRITTEN = CHAT.replace(b'"up/m1"', b'"m1"')


async def post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    session = aiohttp.ClientSession(auto_decompress=False)
    async with session as s, s.post(url, data=data, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def error_of(body: bytes) -> dict:
    error = orjson.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(CHAT)),
        ("x-gzip", gzip.compress(CHAT)),
        ("deflate", zlib.compress(CHAT)),
        ("gzip, gzip", gzip.compress(gzip.compress(CHAT))),
        ("deflate, gzip", gzip.compress(zlib.compress(CHAT))),
        ("identity", CHAT),
    ],
    ids=["gzip", "x-gzip", "deflate", "gzip-gzip", "deflate-gzip", "identity"],
)
async def test_encoded_body_reaches_the_upstream_decoded_and_labelled_so(
    gateway, upstream, coding, encoded
):
    status, _, body = await post(
        f"{gateway.base_url}/chat/completions",
        encoded,
        {"Content-Encoding": coding, "Content-Type": "application/json"},
    )
    assert status == 200, body
    sent = upstream.requests[-1]
    assert sent.body == REWRITTEN
    assert "Content-Encoding" not in sent.headers
    assert sent.headers["Content-Length"] == str(len(REWRITTEN))


async def test_chunked_gzip_upload_is_decoded(gateway, upstream):
    data = gzip.compress(CHAT)

    async def pieces():
        for i in range(0, len(data), 50):
            yield data[i : i + 50]

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gateway.base_url}/chat/completions",
            data=pieces(),
            headers={"Content-Encoding": "gzip"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
    assert upstream.requests[-1].body == REWRITTEN


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
async def test_unknown_coding_is_a_415_naming_it(gateway, upstream, coding):
    status, _, body = await post(
        f"{gateway.base_url}/chat/completions", b"\x28\xb5\x2f\xfd", {"Content-Encoding": coding}
    )
    assert status == 415
    error = error_of(body)
    assert error["code"] == "unsupported_content_encoding"
    assert coding.split(", ")[-1] in error["message"]
    assert not upstream.requests


@pytest.mark.parametrize(
    "data", [gzip.compress(CHAT)[:-8], b"plainly not gzip"], ids=["truncated", "not-gzip"]
)
async def test_broken_gzip_is_a_400_and_nothing_goes_upstream(gateway, upstream, data):
    status, _, body = await post(
        f"{gateway.base_url}/chat/completions", data, {"Content-Encoding": "gzip"}
    )
    assert status == 400
    assert error_of(body)["code"] == "invalid_content_encoding"
    assert not upstream.requests


async def test_limit_applies_to_the_decoded_size(gateway_factory, upstream):
    gw = await gateway_factory(
        f"""
        limits: {{max_body_bytes: 4096}}
        providers:
          - {{name: up, provider_type: custom, base_url: "{upstream.base_url}"}}
        """
    )
    small = orjson.dumps({"model": "up/m1", "input": "x" * 3000})
    big = orjson.dumps({"model": "up/m1", "input": "x" * 5000})
    url = f"{gw.base_url}/embeddings"
    status, _, _ = await post(url, gzip.compress(small), {"Content-Encoding": "gzip"})
    assert status == 200
    assert len(gzip.compress(big)) < 4096  # small on the wire, too big once decoded
    status, _, body = await post(url, gzip.compress(big), {"Content-Encoding": "gzip"})
    assert status == 413
    assert error_of(body)["code"] == "request_too_large"
    assert len(upstream.requests) == 1


def gzip_bomb(inflated: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [c.compress(b'{"model": "up/m1", "input": "')]
    parts += [c.compress(block) for _ in range(inflated >> 20)]
    return b"".join(parts) + c.flush()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def test_gzip_bomb_is_a_413_with_memory_bounded(tmp_path, upstream):
    """200 MiB inflating from ~200 KB: the gateway process (run as `gateway
    serve`) stops at its 8 MiB limit, answers 413 and its peak RSS barely moves."""
    (port,) = free_ports(1)
    config = write_config(
        tmp_path / "cfg",
        f"""
        limits: {{max_body_bytes: 8388608}}
        providers:
          - {{name: up, provider_type: custom, base_url: "{upstream.base_url}"}}
        """,
    )
    bomb = gzip_bomb(200 << 20)
    assert len(bomb) < 400_000
    async with background(
        tmp_path, "gw", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"
    ) as gw:
        await gw.wait_ready(f"http://127.0.0.1:{port}/readyz")
        pid = gw.proc.pid
        before = rss_kib(pid, "VmRSS")
        status, _, body = await asyncio.wait_for(
            post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                bomb,
                {"Content-Encoding": "gzip"},
            ),
            30,
        )
        peak = rss_kib(pid, "VmHWM")
    assert status == 413, body
    assert error_of(body)["code"] == "request_too_large"
    assert not upstream.requests
    # The limit (8 MiB) plus a read's worth; before the fix the whole
    # 200 MiB was inflated and forwarded (RSS +800 MiB).
    assert peak - before < 40 * 1024, (before, peak)
