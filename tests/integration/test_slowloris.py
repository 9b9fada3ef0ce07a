"""Slow clients (slowloris): time limits on receiving requests, a connection cap.

Raw sockets play the attackers, trickling a request head or body a byte at a
time; real clients on fresh connections must still be answered, and every
trickling connection must be closed by the gateway after its limit. The last
test runs `gateway serve` under a low file descriptor limit (ulimit -n 256)
and watches its descriptors in /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import socket
import sys
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from tests.support import REPO, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

CHAT = {"model": "up/m1", "messages": [{"role": "user", "content": "hi"}]}
# A head that never ends: the filler bytes extend the last header's value.
ENDLESS_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: "
# A complete head promising a body that only trickles in.
BODY_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
)


def config(upstream, **limits: float) -> str:
    lines = "".join(f"  {k}: {v}\n" for k, v in limits.items())
    return (
        f"providers:\n  - name: up\n    provider_type: custom\n"
        f"    base_url: {upstream.base_url}\nlimits:\n{lines}"
    )


@dataclass
class Trickler:
    """A raw connection that sends `first`, then one filler byte every
    `every` seconds (the attack's pace), until the gateway closes it."""

    port: int
    first: bytes
    every: float = 0.1
    opened_at: float = 0.0
    closed_at: float | None = None
    received: bytes = b""

    async def run(self) -> Trickler:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.opened_at = asyncio.get_running_loop().time()
        reading = asyncio.create_task(self._read(reader))
        try:
            writer.write(self.first)
            while True:
                await asyncio.wait([reading], timeout=self.every)
                if reading.done():
                    break
                writer.write(b"a")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()  # ours, if the gateway has not closed it
            await asyncio.gather(reading, return_exceptions=True)
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        chunks = []
        try:
            while data := await reader.read(65536):
                chunks.append(data)
        except ConnectionError:
            pass
        self.received = b"".join(chunks)
        self.closed_at = asyncio.get_running_loop().time()

    @property
    def lasted(self) -> float:
        assert self.closed_at is not None
        return self.closed_at - self.opened_at


async def wait_for_condition(check, timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def chat(url: str, timeout: float = 5.0) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.post(f"{url}/v1/chat/completions", json=CHAT) as r,
    ):
        await r.read()
        return r.status


async def healthz(url: str, timeout: float = 5.0) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.get(f"{url}/healthz") as r,
    ):
        return r.status


# --------------------------------------------------------------------------
# In-process gateway: each limit on its own


async def test_a_trickled_head_is_answered_408_and_closed_at_head_timeout(
    gateway_factory, upstream
):
    gw = await gateway_factory(config(upstream, head_timeout=1))
    t = await asyncio.wait_for(Trickler(gw.port, ENDLESS_HEAD).run(), timeout=5)
    assert 0.9 <= t.lasted < 3, t.lasted
    assert t.received.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in t.received
    # A connection that never sends a byte is closed too, without an answer.
    silent = await asyncio.wait_for(Trickler(gw.port, b"", every=60).run(), timeout=5)
    assert 0.9 <= silent.lasted < 3 and silent.received == b""
    await wait_for_condition(lambda: gw.runner.guard.open == 0, what="no open connection")


async def test_a_trickled_body_is_cut_but_a_slow_steady_upload_is_not(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, body_idle_timeout=1))
    # A byte every 0.1 s is not idle, but it is not progress either: the
    # deadline moves on per KiB received.
    trickle = asyncio.create_task(Trickler(gw.port, BODY_HEAD).run())

    # A real client with a slow link: 4 KiB every 0.25 s for ~2.5 s in all.
    body = orjson.dumps(dict(CHAT, pad="x" * 40_000))

    async def slow_body():
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]
            await asyncio.sleep(0.25)  # the link's pace

    async with aiohttp.ClientSession() as s:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        async with s.post(
            f"{gw.base_url}/chat/completions", data=slow_body(), headers=headers
        ) as r:
            assert r.status == 200, await r.text()
    assert upstream.requests[-1].body == body.replace(b'"up/m1"', b'"m1"')

    t = await asyncio.wait_for(trickle, timeout=5)
    assert 0.9 <= t.lasted < 3, t.lasted
    assert t.received == b""  # no answer: the handler was running


async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    gateway_factory, upstream
):
    gw = await gateway_factory(config(upstream, keepalive_timeout=1))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        for _ in range(2):  # the connection is reused while it is not idle too long
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        idle_from = loop.time()
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed
        assert 0.9 <= loop.time() - idle_from < 3
    finally:
        writer.transport.abort()


async def test_past_the_cap_the_oldest_unserved_connection_makes_room(gateway_factory, upstream):
    gw = await gateway_factory(config(upstream, max_connections=3, head_timeout=30))
    first = Trickler(gw.port, ENDLESS_HEAD, every=0.5)
    tasks = [asyncio.create_task(first.run())]
    await wait_for_condition(lambda: gw.runner.guard.open == 1, what="first connection")
    others = [Trickler(gw.port, ENDLESS_HEAD, every=0.5) for _ in range(2)]
    tasks += [asyncio.create_task(t.run()) for t in others]
    await wait_for_condition(lambda: gw.runner.guard.open == 3, what="three connections")

    assert await healthz(gw.url) == 200
    await asyncio.wait_for(tasks[0], timeout=5)
    assert first.closed_at is not None and first.received == b""
    assert all(t.closed_at is None for t in others)
    for t in tasks[1:]:
        t.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)


async def test_past_the_cap_with_every_connection_busy_a_new_one_gets_503(
    gateway_factory, upstream
):
    hold = asyncio.Event()
    upstream.replay([b"data: one\n\n"], hold_open=hold)
    gw = await gateway_factory(config(upstream, max_connections=2))
    async with aiohttp.ClientSession() as s:
        streams = [
            await s.post(f"{gw.base_url}/chat/completions", json=dict(CHAT, stream=True))
            for _ in range(2)
        ]
        try:
            for r in streams:
                assert await r.content.readuntil(b"\n\n") == b"data: one\n\n"
            # Past the cap a new connection is let in on probation; a whole
            # request on it, with no slow connection to close, hears 503.
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b'"code":"too_many_connections"' in answer
            # With the probation places taken (2, the cap, at most), a new
            # connection hears 503 before it sends anything.
            silent = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
            await wait_for_condition(lambda: gw.runner.guard.open == 4, what="probation")
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            answer = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 503 ")
            for _, w in silent:
                w.close()
        finally:
            hold.set()
            for r in streams:
                await r.read()
                r.release()
    assert await healthz(gw.url) == 200  # room again once the streams ended


async def slow_read_chunked(port: int, request: bytes, pace: float) -> bytes:
    """Send `request` on a socket with a small receive buffer, then read the
    chunked response 4 KiB at a time, one read per `pace` seconds: a slow
    reader. Returns the decoded body."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        raw = bytearray()
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=5)
            assert data, f"closed after {len(raw)} bytes"
            raw += data
            await asyncio.sleep(pace)
    finally:
        sock.close()
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" in head.lower()
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2 :]


async def test_a_slow_stream_to_a_slow_reader_outlives_every_limit(gateway_factory, upstream):
    chunks = [bytes([65 + i % 26]) * 32768 + b"\n\n" for i in range(20)]
    upstream.replay(chunks, delay=0.1)  # 2 s of streaming, 640 KiB
    gw = await gateway_factory(
        config(upstream, head_timeout=1, body_idle_timeout=1, keepalive_timeout=1)
    )
    trickle = asyncio.create_task(Trickler(gw.port, ENDLESS_HEAD).run())
    body = orjson.dumps(dict(CHAT, stream=True))
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    # 4 KiB per 25 ms: about 4 s for the whole stream, all limits being 1 s.
    assert await slow_read_chunked(gw.port, request, pace=0.025) == b"".join(chunks)
    assert loop.time() - started > 2
    t = await asyncio.wait_for(trickle, timeout=5)  # the limits were on meanwhile
    assert t.received.startswith(b"HTTP/1.1 408 ") and t.lasted < 3


# --------------------------------------------------------------------------
# `gateway serve` under ulimit -n 256, attacked by 1000 trickling connections


def low_fd_limit() -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


async def serve_with_low_fd_limit(tmp_path, upstream):
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(config(upstream, head_timeout=1, body_idle_timeout=1, keepalive_timeout=1))
    log = (tmp_path / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "serve", "--config", str(path), "--listen", f"127.0.0.1:{port}"),
        cwd=REPO,
        stdout=log,
        stderr=log,
        preexec_fn=low_fd_limit,
    )
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline and proc.returncode is None:
        try:
            if await healthz(url, timeout=1) == 200:
                return proc, port, url
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    pytest.fail(f"gateway did not start:\n{(tmp_path / 'gateway.log').read_text()}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def attacker(port: int, first: bytes, stop: asyncio.Event, started: list[Trickler]):
    """One slot of the attack: soon after the gateway closes its connection
    it opens a new one (as slowloris tools keep their count up)."""
    while True:
        t = Trickler(port, first, every=0.2)
        started.append(t)
        with contextlib.suppress(OSError):  # connect refused or reset under load
            await t.run()
        try:
            await asyncio.wait_for(stop.wait(), timeout=random.uniform(0.2, 1.0))  # the pace
            return
        except TimeoutError:
            pass


async def as_a_client_would(method: str, url: str, **kwargs) -> tuple[int, int]:
    """Call, and retry up to twice after a 503 (Retry-After), as the OpenAI
    SDKs do: (first status, final status). A new connection that comes while
    every place is held by connections that have not sent anything yet
    cannot be told from an attacker's: it hears 503 (never a hang or reset)."""
    statuses = []
    for _ in range(3):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
            s.request(method, url, **kwargs) as r,
        ):
            body = await r.read()
            statuses.append(r.status)
            if r.status != 503:
                break
            assert b'"code":"too_many_connections"' in body and r.headers["Retry-After"]
    return statuses[0], statuses[-1]


async def test_slowloris_under_a_low_fd_limit_does_not_starve_real_clients(tmp_path, upstream):
    proc, port, url = await serve_with_low_fd_limit(tmp_path, upstream)
    try:
        assert await chat(url) == 200  # warm: the upstream connection pool
        baseline = fd_count(proc.pid)

        stop = asyncio.Event()
        started: list[Trickler] = []
        attack = [
            asyncio.create_task(attacker(port, first, stop, started))
            for first in [ENDLESS_HEAD] * 500 + [BODY_HEAD] * 500
        ]
        closed = lambda: [t for t in started if t.closed_at is not None]  # noqa: E731
        # As many connections closed as there are slots: the attack is on, in full.
        await wait_for_condition(lambda: len(closed()) >= 1000, timeout=20, what="the attack")
        loop = asyncio.get_running_loop()
        probing_from = loop.time()
        rounds = []
        # During the attack, real clients on fresh connections are answered.
        while loop.time() < probing_from + 4:
            health = await as_a_client_would("GET", f"{url}/healthz")
            answer = await as_a_client_would("POST", f"{url}/v1/chat/completions", json=CHAT)
            rounds.append((health, answer))
        stop.set()  # no new attacking connections; the open ones keep trickling
        assert len(rounds) >= 10, rounds
        assert [r for r in rounds if r[0][1] != 200 or r[1][1] != 200] == []
        # The attack went on all along: its slots kept connecting.
        assert sum(1 for t in started if t.opened_at > probing_from) >= 1000

        # The gateway closes every trickling connection after its 1 s limit.
        await asyncio.wait_for(asyncio.gather(*attack), timeout=10)
        assert len(closed()) > 1000
        assert max(t.lasted for t in closed()) < 3
        await wait_for_condition(
            lambda: fd_count(proc.pid) <= baseline, timeout=10, what="fds back to baseline"
        )
        assert await healthz(url) == 200
    finally:
        proc.kill()
        await proc.wait()
    log = (tmp_path / "gateway.log").read_text()
    assert "client connections capped at 32" in log, log
