"""The gateway's own aiohttp server under test, built from a config file in a
temp dir exactly as `gateway serve` builds it, and the requests tests send it."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from gateway.reload import Reloader, load_snapshot
from gateway.server import start_gateway
from gateway.snapshot import SnapshotHolder
from gateway.watcher import ConfigWatcher
from tests.support.upstream import Upstream


@dataclass
class GatewayUnderTest:
    config_path: Path
    holder: SnapshotHolder
    reloader: Reloader
    runner: web.AppRunner
    port: int
    watcher: ConfigWatcher | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await self.runner.cleanup()


def write_config(directory: Path, text: str, fragments: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    for name, body in (fragments or {}).items():
        frag = directory / name
        frag.parent.mkdir(parents=True, exist_ok=True)
        frag.write_text(textwrap.dedent(body))
    return path


async def start_gateway_from(
    path: Path, watch_interval: float | None = None, holder: SnapshotHolder | None = None
) -> GatewayUnderTest:
    """Start the gateway on `path`; with `watch_interval`, also its config watcher."""
    holder = holder or SnapshotHolder(load_snapshot(path))
    reloader = Reloader(path, holder)
    runner = await start_gateway(holder, "127.0.0.1", 0, shutdown_grace=2.0, reloader=reloader)
    port = runner.addresses[0][1]
    watcher = None
    if watch_interval is not None:
        watcher = ConfigWatcher(reloader, interval=watch_interval)
        watcher.start()
    return GatewayUnderTest(path, holder, reloader, runner, port, watcher)


def provider_yaml(name: str, upstream: Upstream, **extra: object) -> str:
    """One provider entry (for a `providers:` list) pointing at `upstream`."""
    lines = [f"  - name: {name}", "    provider_type: custom", f"    base_url: {upstream.base_url}"]
    for key, value in extra.items():
        lines.append(f"    {key}: {orjson.dumps(value).decode()}")
    return "\n".join(lines) + "\n"


async def stream_chat(session, gw: GatewayUnderTest, model: str) -> bytes:
    """POST a streamed chat completion for `model` through `gw`; the body, after a 200."""
    async with session.post(
        f"{gw.base_url}/chat/completions", json={"model": model, "stream": True}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def readyz(
    url: str, session: aiohttp.ClientSession | None = None, expect: int | None = 200
) -> dict:
    """GET `url`/readyz and its JSON body, asserting the status `expect` (None: any).
    Without `session`, on a new connection each time: under --workers the
    kernel may then pick either worker."""
    if session is not None:
        async with session.get(f"{url}/readyz") as r:
            assert expect is None or r.status == expect
            return orjson.loads(await r.read())
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(f"{url}/readyz") as r:
        assert expect is None or r.status == expect
        return await r.json()
