"""The bench's baseline: the most naive aiohttp forwarder one would write.

Run: `python3 tests/bench/minimal_forwarder.py --port P --upstream http://127.0.0.1:U`.

Read the body, one shared ClientSession.request to the upstream, then
`iter_any()` into a StreamResponse. No routing, no model rewrite, no header
policy beyond what HTTP forces, no error shaping. It runs with uvloop and with
the same connection-pool size as the gateway's bench config, so the
comparison is about the code on the hot path, not about settings.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

# Headers that describe one hop's connection, not the request.
_SKIP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


def create_app(upstream: str, pool: int) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def start(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool))

    async def stop(app: web.Application) -> None:
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        async with app[session_key].request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            resp = web.StreamResponse(
                status=up.status,
                headers={"Content-Type": up.headers.get("Content-Type", "application/json")},
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ready"}', content_type="application/json")

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT (no path)")
    parser.add_argument("--pool", type=int, default=2000, help="upstream connection limit")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(
        create_app(args.upstream.rstrip("/"), args.pool),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
