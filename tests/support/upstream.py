"""A scriptable aiohttp upstream on 127.0.0.1 that records what it received."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    method: str
    path: str
    headers: CIMultiDictProxy
    body: bytes
    raw_path: str = ""  # the request target as received: path and query, undecoded

    def json(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class Upstream:
    """A scriptable OpenAI-compatible upstream. Set `.handler` to change answers."""

    # None: `/models` goes to `handler` like everything else.
    models: list[str] | None = field(default_factory=lambda: ["m1", "m2"])
    requests: list[Recorded] = field(default_factory=list)
    # The gateway's own GET .../models list fetches (its User-Agent), answered
    # from `models`: kept apart from `requests`, since the gateway fetches
    # lists in the background (model_warmup.py) and tests read `requests[-1]`
    # as the request they sent. A client's passthrough GET stays in `requests`.
    model_list_fetches: list[Recorded] = field(default_factory=list)
    handler: Handler | None = None
    # Set when a streaming handler notices its client (the gateway) went away.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Recorded(request.method, request.path, request.headers, body, request.raw_path)
        if request.path.endswith("/models") and request.method == "GET" and self.models is not None:
            if request.headers.get("User-Agent", "").startswith("gateway/"):
                self.model_list_fetches.append(seen)  # the gateway's own list fetch
            else:
                self.requests.append(seen)  # a client's, passed through
            data = [
                {"id": m, "object": "model", "created": 1, "owned_by": "up"} for m in self.models
            ]
            return web.json_response({"object": "list", "data": data})
        self.requests.append(seen)
        if self.handler is not None:
            return await self.handler(request)
        payload = orjson.loads(body) if body else {}
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": payload.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def replay(
        self,
        chunks: list[bytes],
        delay: float = 0.0,
        content_type: str = "text/event-stream",
        status: int = 200,
        hold_open: asyncio.Event | None = None,
    ) -> None:
        """Answer every POST by writing `chunks` one write each, then end."""

        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
            await resp.prepare(request)
            try:
                for i, chunk in enumerate(chunks):
                    if delay and i:
                        await asyncio.sleep(delay)
                    await resp.write(chunk)
                if hold_open is not None:
                    await hold_open.wait()
                await resp.write_eof()
            except (ConnectionError, asyncio.CancelledError):
                self.disconnected.set()
                raise
            return resp

        self.handler = handler


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on an ephemeral port of 127.0.0.1: its runner (to clean up) and URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def split_awkwardly(data: bytes, seed: int = 0, max_piece: int = 97) -> list[bytes]:
    """Split bytes at random places: mid-line, mid-CRLF, mid-UTF-8 character."""
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_piece)
        pieces.append(data[i : i + n])
        i += n
    return pieces
