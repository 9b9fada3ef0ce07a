"""SIGTERM on a real `gateway serve` process with streams in flight."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys

import aiohttp
import pytest

from tests.support import REPO, free_port

CHUNKS = [b'data: {"i": %d}\n\n' % i for i in range(20)] + [b"data: [DONE]\n\n"]


async def start_serve(tmp_path, upstream, *args: str):
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(200):  # bounded: up to ~10 s for the process to listen
            try:
                async with s.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientConnectionError:
                pass
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    proc.kill()
    _, err = await proc.communicate()
    pytest.fail(f"gateway did not become ready:\n{err.decode()}")


async def stream(session: aiohttp.ClientSession, url: str, started: asyncio.Event):
    async with session.post(
        f"{url}/v1/chat/completions", json={"model": "up/m", "stream": True}
    ) as r:
        first = await r.content.readuntil(b"\n\n")
        started.set()
        return first + await r.read()


async def test_sigterm_lets_streams_finish_and_exits_zero(tmp_path, upstream):
    upstream.replay(CHUNKS, delay=0.05)  # each stream lasts about a second
    proc, url = await start_serve(
        tmp_path, upstream, "--shutdown-grace", "10", "--drain-delay", "0.5"
    )
    try:
        async with aiohttp.ClientSession() as s:
            events = [asyncio.Event() for _ in range(5)]
            tasks = [asyncio.create_task(stream(s, url, e)) for e in events]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=10)

            proc.send_signal(signal.SIGTERM)
            # While draining, readiness fails (still reachable during --drain-delay).
            async with aiohttp.ClientSession() as probe:
                for _ in range(100):
                    async with probe.get(f"{url}/readyz") as r:
                        if r.status == 503:
                            assert (await r.json())["status"] == "draining"
                            break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("/readyz never answered 503 while draining")

            bodies = await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
        expected = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
        assert all(hashlib.sha256(b).hexdigest() == expected for b in bodies)

        # The listener is closed: a new connection is refused.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz"):
                pass
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_streams_past_the_grace_period_are_cut_then_exit_zero(tmp_path, upstream):
    hold = asyncio.Event()
    upstream.replay([b"data: first\n\n"], hold_open=hold)
    proc, url = await start_serve(tmp_path, upstream, "--shutdown-grace", "0.5")
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{url}/v1/chat/completions", json={"model": "up/m", "stream": True}) as r,
        ):
            await r.content.readuntil(b"\n\n")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(r.read(), timeout=10)  # not a clean end
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        # The upstream saw its request closed too.
        await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
    finally:
        hold.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
