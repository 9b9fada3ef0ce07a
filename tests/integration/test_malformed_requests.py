"""Requests aiohttp's parser refuses get the gateway's OpenAI-shaped 400, echoing nothing."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

SECRET = "sk-live-do-not-echo-7f3a9c"

MALFORMED = {
    "header-too-long": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"x" * 20000
        + b"\r\n\r\n"
    ),
    "bad-method": b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "two-lengths": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "nul-in-header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00"
    + SECRET.encode()
    + b"\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  " + SECRET.encode() + b"\r\n\r\n",
}


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_is_an_openai_shaped_400(gateway, caplog, case):
    caplog.set_level(logging.DEBUG)
    answer = await exchange(gateway.port, MALFORMED[case])
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"400", answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert b"server:" not in head.lower()
    error = orjson.loads(body)["error"]
    assert error["code"] == "malformed_request"
    assert set(error) >= {"message", "type", "code"}
    assert SECRET not in answer.decode("latin-1")
    assert SECRET not in caplog.text
