"""The inbound guard on a bare aiohttp app: who is evicted first, flow control, live limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace

from aiohttp import web

from gateway.config import Limits
from gateway.inbound import GuardedAppRunner, InboundGuard
from tests.integration.test_slowloris import ENDLESS_HEAD, Trickler


def holder_of(limits: Limits) -> SimpleNamespace:
    """What the guard reads from a SnapshotHolder: `.current.config.limits`."""
    return SimpleNamespace(current=SimpleNamespace(config=SimpleNamespace(limits=limits)))


async def serve(app: web.Application, holder) -> tuple[GuardedAppRunner, int]:
    runner = GuardedAppRunner(app, guard=InboundGuard(holder), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


@dataclass(eq=False)  # hashable by identity, like the real handlers
class Conn:
    name: str
    opened_at: float


async def test_eviction_order_slow_heads_then_stalled_then_idle_then_bodies():
    guard = InboundGuard(holder_of(Limits()))
    now = asyncio.get_running_loop().time()
    conn = {
        name: Conn(name, opened_at=now - age)
        for name, age in [("young", 0), ("stalled", 5), ("head", 0), ("idle", 9), ("body", 9)]
    }
    guard.fresh.update({conn["stalled"]: None, conn["young"]: None})
    guard.heads[conn["head"]] = None
    guard.idle[conn["idle"]] = None
    guard.bodies[conn["body"]] = None
    order = []
    while (victim := guard.victim(full=True)) is not None:
        order.append(victim.name)
        for pool in (guard.heads, guard.fresh, guard.idle, guard.bodies):
            pool.pop(victim, None)
    # A connection just opened is never closed for another one.
    assert order == ["head", "stalled", "idle", "body"]
    guard.bodies[conn["body"]] = None
    assert guard.victim(full=False) is None  # bodies only at the cap itself


async def test_time_the_gateway_is_not_reading_the_body_does_not_count():
    release = asyncio.Event()

    async def slow_reader(request: web.Request) -> web.Response:
        await release.wait()  # e.g. waiting for an upstream connection
        return web.Response(text=str(len(await request.read())))

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/", slow_reader)
    runner, port = await serve(app, holder_of(Limits(body_idle_timeout=1, head_timeout=1)))
    try:
        body = b"x" * (8 << 20)  # far more than aiohttp buffers before it pauses reading
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        # A trickler on the same server, cut by the head timeout meanwhile,
        # shows the limits were on; then the body is read, 2 s after it came.
        t = await asyncio.wait_for(Trickler(port, ENDLESS_HEAD).run(), timeout=5)
        assert t.received.startswith(b"HTTP/1.1 408 ")
        await asyncio.sleep(1)  # the scenario: 2 s in all of not reading, twice the limit
        release.set()
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(len(str(len(body)))) == str(len(body)).encode()
        writer.close()
    finally:
        await runner.cleanup()


async def test_a_reload_changes_the_limits_for_new_connections():
    holder = holder_of(Limits(head_timeout=30))
    app = web.Application()
    runner, port = await serve(app, holder)
    try:
        old = asyncio.create_task(Trickler(port, ENDLESS_HEAD).run())
        await asyncio.wait_for(_until(lambda: runner.guard.open == 1), timeout=5)
        holder.current = holder_of(Limits(head_timeout=1)).current
        new = await asyncio.wait_for(Trickler(port, ENDLESS_HEAD).run(), timeout=5)
        assert 0.9 <= new.lasted < 3
        assert not old.done()  # it keeps the timeout it started with
        old.cancel()
    finally:
        await runner.cleanup()


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)
