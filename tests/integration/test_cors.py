"""CORS, opt-in, against a real gateway and real loopback upstreams.

Off (no `cors:`): OPTIONS is the 404 it always was and no answer carries a
CORS header. On: preflights are answered by the gateway before auth, every
API answer for an allowed origin (proxied JSON and SSE, the gateway's own
errors, /v1/models) carries Allow-Origin, Vary and Expose-Headers, while
the admin API, the UI and the probes never do. A reload turns it on and off.
An upstream's own Access-Control-* headers never reach the client.
"""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web

from tests.support import Upstream, write_config

APP = "http://app.example.test:5173"
OTHER = "https://evil.example.test"
CLIENT_KEY = "client-key-cors-0123"
CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}
SSE = [b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n', b"data: [DONE]\n\n"]


def preflight_headers(origin: str = APP, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
    }


def config(upstream: Upstream, *sections: str) -> str:
    """One provider `up` (passthrough /v1/*) plus top-level sections, one line each."""
    provider = f'{{name: up, base_url: "{upstream.base_url}", passthrough: ["/v1/*"]}}'
    return "\n".join((f"providers: [{provider}]", *sections)) + "\n"


ON = f"cors: {{allow_origins: ['{APP}']}}"
AUTH = f"auth: {{api_keys: [{CLIENT_KEY}]}}"
BEARER = {"Authorization": f"Bearer {CLIENT_KEY}"}


def cors_headers(r: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def vary(r: aiohttp.ClientResponse) -> set[str]:
    return {t.strip().lower() for v in r.headers.getall("Vary", ()) for t in v.split(",")}


def upstream_with_own_cors(upstream: Upstream) -> None:
    """The upstream allows every origin itself (vLLM's default) and varies on encoding."""
    own = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {**own, "Vary": "Accept-Encoding", "x-ratelimit-remaining-tokens": "99"}
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={**own, "Access-Control-Allow-Methods": "*"})
        if (await request.json()).get("stream"):
            resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for chunk in SSE:
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.json_response({"id": "chatcmpl-1", "choices": []}, headers=headers)

    upstream.handler = handler


async def test_off_by_default_options_is_404_and_no_cors_header_anywhere(gateway_factory, upstream):
    upstream_with_own_cors(upstream)
    gw = await gateway_factory(config(upstream))
    async with aiohttp.ClientSession() as s:
        async with s.options(f"{gw.base_url}/chat/completions", headers=preflight_headers()) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "unknown_endpoint"
            assert cors_headers(r) == {} and "origin" not in vary(r)
        for stream in (False, True):
            body = {**CHAT, "stream": stream}
            async with s.post(
                f"{gw.base_url}/chat/completions", json=body, headers={"Origin": APP}
            ) as r:
                assert r.status == 200
                await r.read()
                # The upstream's own "*" does not open the gateway to every page.
                assert cors_headers(r) == {}
                assert vary(r) == {"accept-encoding"}
                assert r.headers["x-ratelimit-remaining-tokens"] == "99"
        # A passthrough OPTIONS still goes upstream as before; its CORS headers do not come back.
        async with s.options(
            f"{gw.url}/providers/up/v1/chat/completions", headers={"Origin": APP}
        ) as r:
            assert r.status == 204 and cors_headers(r) == {}
    assert [r.method for r in upstream.requests] == ["POST", "POST", "OPTIONS"]


async def test_preflight_from_an_allowed_origin_is_answered_before_auth(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, ON, AUTH))
    paths = [
        "/v1/chat/completions",
        "/v1/responses",
        "/rerank",
        "/v1/models",
        "/v1/responses/resp_123",
        "/providers/up/v1/chat/completions",
    ]
    async with aiohttp.ClientSession() as s:
        for path in paths:
            async with s.options(f"{gw.url}{path}", headers=preflight_headers()) as r:
                assert r.status == 204, path
                assert await r.read() == b""
                assert cors_headers(r) == {
                    "Access-Control-Allow-Origin": APP,
                    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, PATCH, DELETE",
                    # Reflected: the SDKs' own headers (x-stainless-*) need no config.
                    "Access-Control-Allow-Headers": "authorization,content-type,x-stainless-os",
                    "Access-Control-Max-Age": "600",
                }, path
                assert vary(r) == {"origin"}
        # Without auth, the same request that is not a preflight is refused.
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 401
    assert upstream.requests == []  # the passthrough preflight never went upstream


async def test_preflight_from_a_disallowed_origin_is_a_403_without_cors_headers(
    gateway_factory, upstream
):
    gw = await gateway_factory(config(upstream, ON, AUTH))
    async with aiohttp.ClientSession() as s:
        for origin in (OTHER, "null", APP.replace("5173", "5174")):
            async with s.options(
                f"{gw.base_url}/chat/completions", headers=preflight_headers(origin)
            ) as r:
                assert r.status == 403
                error = (await r.json())["error"]
                assert error["code"] == "cors_origin_not_allowed"
                assert error["type"] == "permission_error"
                assert "cors.allow_origins" in error["message"]
                assert cors_headers(r) == {}
                assert vary(r) == {"origin"}
        # An OPTIONS that is no preflight (no Access-Control-Request-Method) is routed as before.
        async with s.options(f"{gw.base_url}/chat/completions", headers={"Origin": APP}) as r:
            assert r.status == 404 and "Access-Control-Allow-Origin" in r.headers


async def test_actual_requests_json_and_streamed_carry_allow_origin_and_expose(
    gateway_factory, upstream
):
    upstream_with_own_cors(upstream)
    gw = await gateway_factory(config(upstream, ON, AUTH))
    async with aiohttp.ClientSession() as s:
        for stream in (False, True):
            async with s.post(
                f"{gw.base_url}/chat/completions",
                json={**CHAT, "stream": stream},
                headers={"Origin": APP, **BEARER},
            ) as r:
                assert r.status == 200
                body = await r.read()
                # The gateway's policy, not the upstream's "*" and credentials.
                assert r.headers["Access-Control-Allow-Origin"] == APP
                assert "Access-Control-Allow-Credentials" not in r.headers
                expose = {
                    h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")
                }
                assert {
                    "x-request-id",
                    "x-gateway-overhead-ms",
                    "x-ratelimit-remaining-tokens",
                } <= expose
                assert vary(r) == {"accept-encoding", "origin"}  # the upstream's Vary kept
            if stream:
                assert r.headers["Content-Type"] == "text/event-stream"
                assert body == b"".join(SSE)  # byte-identical
            else:
                assert orjson.loads(body) == {"id": "chatcmpl-1", "choices": []}
        # A disallowed origin gets the answer (the browser will not show it) without CORS.
        async with s.post(
            f"{gw.base_url}/chat/completions", json=CHAT, headers={"Origin": OTHER, **BEARER}
        ) as r:
            assert r.status == 200
            assert cors_headers(r) == {} and vary(r) == {"accept-encoding", "origin"}
        # A client that is no browser (no Origin) gets no CORS header, only Vary.
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=BEARER) as r:
            assert cors_headers(r) == {} and "origin" in vary(r)


async def test_gateway_made_errors_and_model_list_carry_allow_origin(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, ON, AUTH, "limits: {max_body_bytes: 1000}"))
    origin = {"Origin": APP}
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    checks = [
        ("POST", "/v1/chat/completions", CHAT, origin, 401),
        ("POST", "/v1/chat/completions", big, {**origin, **BEARER}, 413),
        ("POST", "/v1/chat/completions", {**CHAT, "model": "nope/x"}, {**origin, **BEARER}, 404),
        ("GET", "/v1/no-such-endpoint", None, {**origin, **BEARER}, 404),
        ("GET", "/v1/models", None, {**origin, **BEARER}, 200),
        ("GET", "/providers/up/v1/models", None, origin, 401),
    ]
    async with aiohttp.ClientSession() as s:
        for method, path, body, headers, status in checks:
            async with s.request(method, f"{gw.url}{path}", json=body, headers=headers) as r:
                assert r.status == status, path
                if status >= 400:
                    assert "error" in await r.json()
                assert r.headers["Access-Control-Allow-Origin"] == APP, path
                assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
                assert "origin" in vary(r)
        async with s.get(f"{gw.base_url}/models", headers={**origin, **BEARER}) as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["up/m1", "up/m2"]


async def test_admin_ui_and_probes_never_get_cors(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, ON, "admin: {token: admin-token-cors-0123}"))
    admin = {"Authorization": "Bearer admin-token-cors-0123", "Origin": APP}
    async with aiohttp.ClientSession() as s:
        for path, headers, status in [
            ("/admin/providers", admin, 200),
            ("/admin/providers", {"Origin": APP}, 401),
            ("/ui/", {"Origin": APP}, 200),
            ("/healthz", {"Origin": APP}, 200),
            ("/readyz", {"Origin": APP}, 200),
            ("/metrics", {"Origin": APP}, 200),
        ]:
            async with s.get(f"{gw.url}{path}", headers=headers) as r:
                assert r.status == status, path
                assert cors_headers(r) == {} and "origin" not in vary(r), path
        for path in ("/admin/providers", "/ui/"):
            async with s.options(f"{gw.url}{path}", headers=preflight_headers(method="GET")) as r:
                assert r.status == 404, path  # as without CORS: no preflight answered
                assert cors_headers(r) == {}, path


async def test_star_allows_any_origin_without_vary(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, "cors: {allow_origins: ['*'], max_age: 60}"))
    async with aiohttp.ClientSession() as s:
        for origin in (APP, OTHER):
            async with s.options(
                f"{gw.base_url}/chat/completions", headers=preflight_headers(origin)
            ) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert r.headers["Access-Control-Max-Age"] == "60"
            async with s.post(
                f"{gw.base_url}/chat/completions", json=CHAT, headers={"Origin": origin}
            ) as r:
                assert r.status == 200
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "Access-Control-Allow-Credentials" not in r.headers
                assert "origin" not in vary(r)  # the same answer for every origin


async def test_configured_allow_headers_and_credentials(gateway_factory, upstream):
    cors = (
        f"cors: {{allow_origins: ['{APP}'], allow_headers: [Authorization, Content-Type], "
        "expose_headers: [X-Request-Id], allow_credentials: true}"
    )
    gw = await gateway_factory(config(upstream, cors))
    async with aiohttp.ClientSession() as s:
        async with s.options(f"{gw.base_url}/chat/completions", headers=preflight_headers()) as r:
            assert r.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
        async with s.post(
            f"{gw.base_url}/chat/completions", json=CHAT, headers={"Origin": APP}
        ) as r:
            assert r.headers["Access-Control-Expose-Headers"] == "X-Request-Id"
            assert r.headers["Access-Control-Allow-Credentials"] == "true"


async def test_a_reload_turns_cors_on_and_off(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream))
    directory = gw.config_path.parent

    async def preflight_status() -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.options(f"{gw.base_url}/chat/completions", headers=preflight_headers()) as r,
        ):
            return r.status

    async def allow_origin() -> str | None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers={"Origin": APP}) as r,
        ):
            return r.headers.get("Access-Control-Allow-Origin")

    assert (await preflight_status(), await allow_origin()) == (404, None)
    write_config(directory, config(upstream, ON))
    assert gw.reloader.reload()
    assert (await preflight_status(), await allow_origin()) == (204, APP)
    write_config(
        directory, config(upstream, "cors: {allow_origins: ['*'], allow_credentials: true}")
    )
    assert not gw.reloader.reload()  # rejected: the old policy keeps serving
    assert "cors.allow_credentials" in gw.reloader.status.last_error
    assert (await preflight_status(), await allow_origin()) == (204, APP)
    write_config(directory, config(upstream))
    assert gw.reloader.reload()
    assert (await preflight_status(), await allow_origin()) == (404, None)
