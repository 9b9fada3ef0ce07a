"""The admin API and secrets: no header injection, no environment reading, no echo.

- A key or header value that cannot go into a request head is a 422 naming
  the field (a CR/LF key used to answer 500 with a traceback).
- `env:NAME` is refused unless `admin.env_prefixes` allows the name: else
  any variable of the gateway's environment could be sent as a Bearer token
  to a base_url of the caller's choosing.
- An upstream error body that echoes the request (key included) is shown
  and logged with the provider's secrets redacted.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.sealing import write_keypair
from tests.support import start_gateway_from, write_config

TOKEN = "admin-token-for-secret-tests"
KEY = "sk-upstream-secret-0123456789"


async def _admin_gateway(tmp_path, monkeypatch, extra_admin: str = ""):
    monkeypatch.setenv("HS_ADMIN_TOKEN", TOKEN)
    cfg = tmp_path / "cfg"
    write_keypair(cfg / "keys")
    (cfg / "providers.d").mkdir(parents=True)
    path = write_config(
        cfg,
        f"""
        include: providers.d
        seal_key_file: keys/seal.key
        admin: {{token: "env:HS_ADMIN_TOKEN"{extra_admin}}}
        """,
    )
    return await start_gateway_from(path)


@pytest.fixture
async def admin(tmp_path, monkeypatch):
    gw = await _admin_gateway(tmp_path, monkeypatch)
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    yield gw, session
    await session.close()
    await gw.close()


async def call(session, method, url, body=None):
    data = None if body is None else orjson.dumps(body)
    async with session.request(method, url, data=data) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if raw else None), raw


def record(upstream, **extra) -> dict:
    return {"name": "p1", "base_url": upstream.base_url, **extra}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"api_key": f"{KEY}\r\nX-Injected: 1"}, "api_key"),
        ({"api_key": f"{KEY}\n"}, "api_key"),  # the newline trim is for env: only
        ({"api_key": f"{KEY}\x7f"}, "api_key"),
        ({"api_key": "sk-\u20ac-not-latin1"}, "api_key"),
        ({"proxy": "http://127.0.0.1:3128", "proxy_auth": "user:pa\r\nss"}, "proxy_auth"),
        ({"headers": {"X-Title": "a\x00b"}}, "headers.X-Title"),
        ({"headers": {"X-Title": "a\x0bb"}}, "headers.X-Title"),
        ({"headers": {"X-Title": "a\x7fb"}}, "headers.X-Title"),
        ({"headers": {"X-Title": "a\r\nX-Injected: 1"}}, "headers.X-Title"),
        ({"headers": {"X-A\r\nX-Injected": "1"}}, "headers.X-A\\r\\nX-Injected"),
        ({"headers": {"Bad Name": "1"}}, "headers.Bad Name"),
    ],
)
async def test_values_that_cannot_go_into_a_head_are_422_naming_the_field(
    admin, upstream, caplog, change, field
):
    gw, s = admin
    url = f"{gw.url}/admin/providers"
    with caplog.at_level(logging.DEBUG):
        status, body, raw = await call(s, "POST", url, record(upstream, **change))
        assert status == 422, body
        assert body["error"]["field"] == field
        # Through PUT on an existing provider as well.
        assert (await call(s, "POST", url, record(upstream)))[0] == 201
        status, body, _ = await call(s, "PUT", f"{url}/p1", record(upstream, **change))
        assert status == 422 and body["error"]["field"] == field
    assert b"X-Injected: 1" not in raw and "Traceback" not in caplog.text
    assert KEY not in raw.decode() and KEY not in caplog.text
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    # Nothing was stored but the valid record.
    listing = (await call(s, "GET", url))[1]["providers"]
    assert [p["name"] for p in listing] == ["p1"] and listing[0]["api_key"] is None


@pytest.mark.parametrize("field", ["api_key", "proxy_auth"])
async def test_env_references_are_refused_by_default(admin, upstream, monkeypatch, field):
    gw, s = admin
    monkeypatch.setenv("HS_SOME_VARIABLE", "user:not-for-the-api")
    extra = {"proxy": "http://127.0.0.1:3128"} if field == "proxy_auth" else {}
    body = record(upstream, **extra, **{field: "env:HS_SOME_VARIABLE"})
    status, answer, _ = await call(s, "POST", f"{gw.url}/admin/providers", body)
    assert status == 422 and answer["error"]["field"] == field
    assert "admin.env_prefixes" in answer["error"]["message"]
    assert (await call(s, "POST", f"{gw.url}/admin/providers", record(upstream)))[0] == 201
    status, answer, _ = await call(s, "PUT", f"{gw.url}/admin/providers/p1", body)
    assert status == 422 and answer["error"]["field"] == field
    assert upstream.requests == []  # nothing was ever sent anywhere


async def test_env_references_with_an_allowed_prefix(tmp_path, upstream, monkeypatch):
    gw = await _admin_gateway(tmp_path, monkeypatch, ", env_prefixes: [GATEWAY_PROVIDER_]")
    monkeypatch.setenv("GATEWAY_PROVIDER_P1_KEY", KEY + "\n")  # from a file: one newline
    monkeypatch.setenv("GATEWAY_PROVIDER_BAD", f"{KEY}\r\nX-Injected: 1")
    monkeypatch.setenv("OTHER_SECRET", "not-for-the-api")
    url = f"{gw.url}/admin/providers"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            status, body, _ = await call(
                s, "POST", url, record(upstream, api_key="env:OTHER_SECRET")
            )
            assert status == 422 and "GATEWAY_PROVIDER_" in body["error"]["message"]
            status, body, raw = await call(
                s, "POST", url, record(upstream, api_key="env:GATEWAY_PROVIDER_BAD")
            )
            assert status == 422 and body["error"]["field"] == "api_key"
            assert b"X-Injected" not in raw
            status, body, _ = await call(
                s, "POST", url, record(upstream, api_key="env:GATEWAY_PROVIDER_P1_KEY")
            )
            assert status == 201, body
            stored = (gw.config_path.parent / "providers.d" / "p1.yaml").read_text()
            assert "api_key: env:GATEWAY_PROVIDER_P1_KEY" in stored
            async with s.post(
                f"{gw.base_url}/chat/completions",
                json={"model": "p1/m1", "messages": [{"role": "user", "content": "hi"}]},
            ) as r:
                assert r.status == 200
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {KEY}"
    finally:
        await gw.close()


async def test_upstream_error_echoing_the_key_is_redacted(admin, upstream, caplog):
    """A /models 401 page that quotes the request's headers (as some servers'
    debug pages do): the admin API's answers and the logs never show the key."""
    gw, s = admin

    async def echo(request: web.Request) -> web.Response:
        quoted = {k: v for k, v in request.headers.items()}
        return web.json_response({"error": "bad key", "request_headers": quoted}, status=401)

    upstream.models = None  # /models goes to the handler
    upstream.handler = echo
    url = f"{gw.url}/admin/providers"
    with caplog.at_level(logging.DEBUG):
        status, _, _ = await call(s, "POST", url, record(upstream, api_key=KEY))
        assert status == 201
        status, body, raw = await call(s, "GET", f"{url}/p1/models")
        assert status == 502 and body["error"]["upstream_status"] == 401
        assert "Bearer ***" in body["error"]["upstream_body"]  # the echo, redacted
        _, verify, verify_raw = await call(s, "POST", f"{url}/p1/verify", {"model": "m1"})
        assert verify["valid"] is False and "***" in verify["error"]
        async with s.get(f"{gw.base_url}/models") as r:  # logs "left out: ..."
            listing = await r.read()
    assert upstream.requests and all(
        r.headers["Authorization"] == f"Bearer {KEY}" for r in upstream.requests
    )
    for text in (raw, verify_raw, listing, caplog.text.encode()):
        assert KEY.encode() not in text
