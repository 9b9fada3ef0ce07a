"""`gateway serve --workers 2`: one port, two processes, signals reach both, one /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, free_port, readyz


async def until_both(url: str, predicate, tries: int = 400) -> dict[int, dict]:
    """Poll /readyz until two different pids satisfy `predicate` (bounded)."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        try:
            body = await readyz(url, expect=None)
        except aiohttp.ClientConnectionError:  # a worker being replaced
            await asyncio.sleep(0.01)
            continue
        if predicate(body):
            seen[body["pid"]] = body
            if len(seen) == 2:
                return seen
        await asyncio.sleep(0.01)
    pytest.fail(f"only saw workers {sorted(seen)} satisfy the condition")


@contextlib.asynccontextmanager
async def two_workers(tmp_path, upstream):
    """`serve --workers 2` on a free port; yields (process, url, {worker pid: /readyz})."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"providers:\n  - name: up\n    base_url: {upstream.base_url}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--workers", "2",
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    workers: dict[int, dict] = {}
    try:
        for _ in range(200):  # bounded wait for the first worker to listen
            try:
                await readyz(url, expect=None)
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        workers = await until_both(url, lambda b: True)
        assert proc.pid not in workers  # the parent only supervises
        yield proc, url, workers
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in workers:  # never leave a worker behind, whatever the test did
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def test_two_workers_share_the_port_and_get_signals(tmp_path, upstream):
    async with two_workers(tmp_path, upstream) as (proc, url, workers):
        # Both forward requests.
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                async with s.post(f"{url}/v1/chat/completions", json={"model": "up/m"}) as r:
                    assert r.status == 200

        # SIGHUP reaches every worker: each counts one more successful reload.
        base = {pid: b["reload"]["successes"] for pid, b in workers.items()}
        proc.send_signal(signal.SIGHUP)
        await until_both(url, lambda b: b["reload"]["successes"] > base.get(b["pid"], 1 << 30))

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
        assert not any(running(pid) for pid in workers)


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path, upstream):
    """SIGKILL gives the parent no chance to forward anything: the kernel
    must tell the workers, or they keep serving the port unsupervised."""
    async with two_workers(tmp_path, upstream) as (proc, _, workers):
        proc.kill()
        await proc.wait()
        for _ in range(1000):  # bounded: they drain (nothing in flight) and exit
            if not any(running(pid) for pid in workers):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"workers {[p for p in workers if running(p)]} outlived their parent")


def requests_total(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                total += sample.value
    return total


async def scrape_total(url: str) -> float:
    # A new connection each time, so the kernel may pick either worker.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(f"{url}/metrics") as r:
        assert r.status == 200
        return requests_total(await r.text())


async def until_scrapes_show(url: str, want: float, in_a_row: int = 20, tries: int = 600) -> None:
    """Poll /metrics until `in_a_row` consecutive scrapes all report `want`
    requests (bounded). None may report more: that would be double counting."""
    streak, seen = 0, []
    for _ in range(tries):
        total = await scrape_total(url)
        assert total <= want, f"a scrape counted {total} requests, more than the {want} sent"
        seen.append(total)
        streak = streak + 1 if total == want else 0
        if streak == in_a_row:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"scrapes never agreed on {want} requests; last ones: {seen[-10:]}")


async def test_metrics_count_every_workers_requests_and_survive_a_restart(tmp_path, upstream):
    """A scrape reaches one worker; it must still report all workers' requests,
    also after the parent replaces a worker that died."""
    async with two_workers(tmp_path, upstream) as (proc, url, workers):
        # Fresh connections, so both workers answer some of them.
        sent = 30
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(sent):
                async with s.post(f"{url}/v1/chat/completions", json={"model": "up/m"}) as r:
                    assert r.status == 200
        await until_scrapes_show(url, sent)

        # A worker dies; its replacement carries on its figures.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        replaced = await until_both(url, lambda b: b["pid"] != victim)
        assert victim not in replaced
        workers.update(replaced)  # so the context manager cleans the new one up too
        await until_scrapes_show(url, sent)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
