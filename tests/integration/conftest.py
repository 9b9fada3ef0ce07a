"""Fixtures shared by the integration tests: an HTTPS upstream with its own CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

from tests.support import self_signed


@dataclass
class TlsUpstream:
    cert: str  # its self-signed certificate (PEM), also the CA to trust
    port: int
    seen: list  # (Authorization, JSON body) of each chat request it received


@pytest.fixture
async def tls_upstream(tmp_path, monkeypatch) -> AsyncIterator[TlsUpstream]:
    """An HTTPS upstream on 127.0.0.1 with a certificate nothing trusts yet
    (SSL_CERT_FILE unset: only the system's CAs, which did not sign it)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    cert, key = self_signed(tmp_path)
    seen: list = []
    runner, port = await start_tls_upstream(cert, key, seen)
    try:
        yield TlsUpstream(cert, port, seen)
    finally:
        await runner.cleanup()


async def start_tls_upstream(cert: str, key: str, seen: list) -> tuple[web.AppRunner, int]:
    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Authorization"), await request.json()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("secure", " hello"):
            await resp.write(b"data: " + orjson.dumps({"content": word}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tls-model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, runner.addresses[0][1]
