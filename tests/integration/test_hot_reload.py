"""Hot reload through the real watcher, real files and real loopback servers.

Every change style GitOps produces (in-place write, rename-over, the
Kubernetes `..data` symlink swap) must reach the live gateway within 2 s,
and no reload may fail or alter a request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.reload import load_snapshot
from gateway.server import serve
from gateway.snapshot import Snapshot, SnapshotHolder
from tests.support import (
    SSE_FIXTURES,
    GatewayUnderTest,
    Upstream,
    factory,
    free_port,
    provider_yaml,
    readyz,
    split_awkwardly,
    start_gateway_from,
)

POLL = 0.05  # watcher interval in these tests
WITHIN = 2.0  # the bound for a change to take effect

# --------------------------------------------------------------------------
# Helpers


async def eventually(
    probe: Callable[[], object | Awaitable[object]], timeout: float = WITHIN, what: str = ""
) -> object:
    """Poll `probe` (sync or async) until truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.01)


def config(*providers: str, extra: str = "") -> str:
    return textwrap.dedent(extra) + "providers:\n" + "".join(providers)


async def post(
    session: aiohttp.ClientSession, gw: GatewayUnderTest, model: str, stream: bool = False
) -> tuple[int, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with session.post(f"{gw.base_url}/chat/completions", json=body) as r:
        return r.status, await r.read()


def header(snapshot: Snapshot, provider: str, name: str) -> str | None:
    runtime = snapshot.providers.get(provider)
    return dict(runtime.config.headers).get(name) if runtime else None


@pytest.fixture
async def hot():
    """Start gateways with their watcher polling every POLL seconds."""

    async def start(path: Path, holder: SnapshotHolder | None = None) -> GatewayUnderTest:
        return await start_gateway_from(path, watch_interval=POLL, holder=holder)

    async with factory(start) as make:
        yield make


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


# The three ways a config file changes on disk.


class InPlace:
    """An editor or `echo >` that rewrites the same inode."""

    def __init__(self, directory: Path):
        self.path = directory / "gateway.yaml"

    def initial(self, text: str) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(text)
        return self.path

    def update(self, text: str) -> None:
        inode = os.stat(self.path).st_ino
        with open(self.path, "r+") as f:
            f.truncate()
            f.write(text)
        assert os.stat(self.path).st_ino == inode


class RenameOver(InPlace):
    """An editor that writes a temp file and renames it over the original."""

    def update(self, text: str) -> None:
        inode = os.stat(self.path).st_ino
        tmp = self.path.with_name(".gateway.yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        assert os.stat(self.path).st_ino != inode


class ConfigMapMount:
    """A mounted ConfigMap as kubelet's AtomicWriter lays it out and updates it.

    DIR/..2026_.../gateway.yaml, DIR/..data -> ..2026_..., and the visible
    DIR/gateway.yaml -> ..data/gateway.yaml. An update writes a new
    timestamped dir, points `..data_tmp` at it, renames that over `..data`,
    then deletes the old dir.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / "gateway.yaml"
        self.n = 0

    def publish(self, files: dict[str, str]) -> None:
        self.n += 1
        stamp = self.dir / f"..2026_01_02_03_04_{self.n:02d}.{123456789 + self.n}"
        stamp.mkdir(parents=True)
        for name, text in files.items():
            (stamp / name).write_text(text)
        data = self.dir / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamp.name, self.dir / "..data_tmp")
        os.replace(self.dir / "..data_tmp", data)
        for name in files:
            if not os.path.lexists(self.dir / name):
                os.symlink(f"..data/{name}", self.dir / name)
        if old:
            shutil.rmtree(self.dir / old)

    def initial(self, text: str) -> Path:
        self.publish({"gateway.yaml": text})
        return self.path

    def update(self, text: str) -> None:
        self.publish({"gateway.yaml": text})
        assert self.path.is_symlink() and os.readlink(self.path) == "..data/gateway.yaml"


STYLES = {"in_place": InPlace, "rename_over": RenameOver, "k8s_symlink_swap": ConfigMapMount}


# --------------------------------------------------------------------------
# Change styles


@pytest.mark.parametrize("style", list(STYLES))
async def test_change_style_new_provider_and_edited_base_url_within_2s(
    style, tmp_path, hot, client, upstream_factory
):
    a, b, c = await upstream_factory(), await upstream_factory(), await upstream_factory()
    layout = STYLES[style](tmp_path / "cfg")
    path = layout.initial(config(provider_yaml("p", a)))
    gw = await hot(path)
    assert (await post(client, gw, "p/m1"))[0] == 200
    assert len(a.requests) == 1
    assert (await post(client, gw, "new/m1"))[0] == 404
    hash_before = (await readyz(gw.url, client))["config_hash"]

    started = time.monotonic()
    layout.update(config(provider_yaml("p", b), provider_yaml("new", c)))

    async def new_routable() -> bool:
        return (await post(client, gw, "new/m1"))[0] == 200

    await eventually(new_routable, what="new provider routable")
    assert time.monotonic() - started < WITHIN
    assert c.requests[-1].json()["model"] == "m1"
    # The edited base_url took effect in the same reload.
    n_a = len(a.requests)
    assert (await post(client, gw, "p/m1"))[0] == 200
    assert len(a.requests) == n_a and len(b.requests) == 1
    assert time.monotonic() - started < WITHIN

    ready = await readyz(gw.url, client)
    assert ready["config_hash"] != hash_before
    assert ready["reload"]["config_hash"] == ready["config_hash"]
    assert ready["reload"]["successes"] >= 1 and ready["reload"]["failures"] == 0
    assert ready["reload"]["last_reload_ok"] is True


async def test_include_dir_fragment_added_edited_and_removed(
    tmp_path, hot, client, upstream_factory
):
    a, b = await upstream_factory(), await upstream_factory()
    d = tmp_path / "cfg"
    (d / "providers.d").mkdir(parents=True)
    path = d / "gateway.yaml"
    path.write_text("include: providers.d\nproviders: []\n")
    gw = await hot(path)
    frag = d / "providers.d" / "frag.yaml"

    tmp = d / "providers.d" / ".frag.yaml.tmp"  # dot file: never read as a fragment
    tmp.write_text(f"name: frag\nbase_url: {a.base_url}\n")
    os.replace(tmp, frag)

    async def status(model: str) -> int:
        return (await post(client, gw, model))[0]

    async def routable() -> bool:
        return await status("frag/m1") == 200

    await eventually(routable, what="fragment provider routable")
    assert len(a.requests) >= 1

    frag.write_text(f"name: frag\nbase_url: {b.base_url}\n")  # in place

    async def goes_to_b() -> bool:
        return await status("frag/m1") == 200 and len(b.requests) > 0

    await eventually(goes_to_b, what="edited fragment live")

    frag.unlink()

    async def gone() -> bool:
        return await status("frag/m1") == 404

    await eventually(gone, what="removed fragment gone")


# --------------------------------------------------------------------------
# Invalid configs


async def test_invalid_config_rejected_whole_with_one_log_line(
    tmp_path, hot, client, upstream_factory, caplog
):
    a, b = await upstream_factory(), await upstream_factory()
    path = tmp_path / "gateway.yaml"
    path.write_text(config(provider_yaml("p", a)))
    gw = await hot(path)
    before = await readyz(gw.url, client)
    caplog.set_level(logging.INFO, logger="gateway")

    # A valid edit (p -> b) next to an invalid provider: nothing of it goes live.
    path.write_text(
        config(provider_yaml("p", b), "  - name: broken\n    base_url: ftp://example.com\n")
    )
    await eventually(lambda: gw.reloader.status.failures == 1, what="rejection")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "\n" not in line
    assert str(path) in line and "provider 'broken'" in line and "field 'base_url'" in line
    assert before["config_hash"] in line  # says which config keeps serving

    assert (await post(client, gw, "p/m1"))[0] == 200
    assert len(a.requests) == 1 and not b.requests
    ready = await readyz(gw.url, client)
    assert ready["config_hash"] == before["config_hash"]
    assert ready["reload"]["failures"] == 1 and ready["reload"]["last_reload_ok"] is False
    assert "provider 'broken'" in ready["reload"]["last_error"]
    assert ready["reload"]["last_error_at"] is not None

    path.write_text(config(provider_yaml("p", b)))
    await eventually(lambda: gw.reloader.status.successes == 1, what="fixed config live")
    assert (await post(client, gw, "p/m1"))[0] == 200 and len(b.requests) == 1
    ready = await readyz(gw.url, client)
    assert ready["reload"]["last_reload_ok"] is True
    assert ready["reload"]["last_error"] is not None, "the last error stays visible"


class RecordingHolder(SnapshotHolder):
    """The real holder, also remembering every snapshot it made live."""

    def __init__(self, snapshot: Snapshot):
        super().__init__(snapshot)
        self.history = [snapshot]

    def swap(self, new: Snapshot) -> Snapshot:
        self.history.append(new)
        return super().swap(new)


def generation(gen: int, s: Upstream, q: Upstream, valid: bool) -> str:
    """Config generation `gen`: both providers carry X-Gen; odd ones are broken."""
    providers = provider_yaml("s", s, headers={"X-Gen": str(gen)}) + provider_yaml(
        "q", q, headers={"X-Gen": str(gen)}
    )
    if valid:
        return config(providers, provider_yaml(f"extra-{gen}", q))
    broken = [
        "  - name: Bad Name\n    base_url: http://127.0.0.1:9/v1\n",
        "  - name: x\n    base_url: http://127.0.0.1:9/v1\n    surprise: 1\n",
        "  - name: s\n    base_url: http://127.0.0.1:9/v1\n",  # duplicate name
        "  - name: y\n    base_url: [not, a, url\n",  # YAML syntax error
        "  - name: z\n    base_url: http://127.0.0.1:9/v1\n    api_key: env:GATEWAY_TEST_UNSET_VAR\n",
    ]
    return config(providers, broken[gen // 2 % len(broken)])


async def test_20_reloads_under_50_streams_lose_nothing_and_invalid_never_goes_live(
    tmp_path, hot, upstream_factory
):
    s, q = await upstream_factory(), await upstream_factory()
    sse = (SSE_FIXTURES / "vllm-usage.sse").read_bytes()
    release = asyncio.Event()
    s.replay(split_awkwardly(sse, seed=7, max_piece=64), delay=0.005, hold_open=release)

    path = tmp_path / "gateway.yaml"
    path.write_text(generation(0, s, q, valid=True))
    holder = RecordingHolder(load_snapshot(path))
    gw = await hot(path, holder=holder)
    status = gw.reloader.status
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def stream() -> bytes:
            status_code, body = await post(session, gw, "s/m1", stream=True)
            assert status_code == 200, body
            return body

        quick_results: list[int] = []
        stop_quick = asyncio.Event()

        async def quick_requests() -> None:
            while not stop_quick.is_set():
                quick_results.append((await post(session, gw, "q/m1"))[0])
                await asyncio.sleep(0.01)  # pacing only: keeps the request count small

        streams = [asyncio.create_task(stream()) for _ in range(30)]
        quick = asyncio.create_task(quick_requests())
        await eventually(lambda: len(s.requests) == 30, what="30 streams upstream")

        hashes: dict[int, str] = {0: gw.holder.current.digest}
        readyz_hashes: list[str] = []
        valid_gens = {0}
        for gen in range(1, 21):
            valid = gen % 2 == 0
            failures = status.failures
            tmp = path.with_name(".gateway.yaml.tmp")
            tmp.write_text(generation(gen, s, q, valid))
            os.replace(tmp, path)
            if valid:
                valid_gens.add(gen)
                await eventually(
                    lambda g=gen: header(gw.holder.current, "s", "X-Gen") == str(g),
                    what=f"generation {gen} live",
                )
                hashes[gen] = gw.holder.current.digest
            else:
                await eventually(
                    lambda f=failures: status.failures == f + 1, what=f"generation {gen} rejected"
                )
                assert header(gw.holder.current, "s", "X-Gen") == str(gen - 1)
            readyz_hashes.append((await readyz(gw.url, session))["config_hash"])
            streams.append(asyncio.create_task(stream()))  # one more, on this snapshot

        assert len(streams) == 50
        await eventually(lambda: len(s.requests) == 50, what="all 50 streams upstream")
        stop_quick.set()
        release.set()
        bodies = await asyncio.gather(*streams)
        await quick

    assert status.successes == 10 and status.failures == 10
    assert all(body == sse for body in bodies), "every stream byte-identical"
    assert quick_results and all(code == 200 for code in quick_results), quick_results
    # Invalid generations never went live: not in any swap, not on /readyz,
    # and no request ever reached an upstream with their headers.
    live_gens = {int(header(snap, "s", "X-Gen")) for snap in holder.history}
    assert live_gens == valid_gens
    assert set(readyz_hashes) <= set(hashes.values())
    seen = {int(r.headers["X-Gen"]) for r in s.requests + q.requests if "X-Gen" in r.headers}
    assert seen <= valid_gens
    # Each valid reload changed `s` and `q`, so their old pools must all be
    # closed now that the streams are over; the live ones stay open.
    live = set(map(id, gw.holder.current.providers.values()))
    old = {
        id(r): r for snap in holder.history for r in snap.providers.values() if id(r) not in live
    }
    await eventually(lambda: all(r.closed for r in old.values()), what="old pools closed")
    assert not any(r.closed for r in gw.holder.current.providers.values())


# --------------------------------------------------------------------------
# In-flight requests and pools


async def test_removed_provider_404s_while_its_stream_completes(
    tmp_path, hot, client, upstream_factory
):
    gone_up, stay_up = await upstream_factory(), await upstream_factory()
    sse = (SSE_FIXTURES / "tool-calls.sse").read_bytes()
    hold = asyncio.Event()
    gone_up.replay(split_awkwardly(sse, seed=3), hold_open=hold)
    path = tmp_path / "gateway.yaml"
    path.write_text(config(provider_yaml("gone", gone_up), provider_yaml("stay", stay_up)))
    gw = await hot(path)

    in_flight = asyncio.create_task(post(client, gw, "gone/m1", stream=True))
    await eventually(lambda: len(gone_up.requests) == 1, what="stream reached upstream")
    old_runtime = gw.holder.current.providers["gone"]
    old_session = old_runtime.session

    path.write_text(config(provider_yaml("stay", stay_up)))
    await eventually(lambda: "gone" not in gw.holder.current.providers, what="provider removed")

    async with aiohttp.ClientSession() as other:
        status, body = await post(other, gw, "gone/m1")
    assert status == 404
    assert orjson.loads(body)["error"]["code"] == "model_not_found"
    assert len(gone_up.requests) == 1
    assert not old_session.closed, "the pool stays while its stream is in flight"

    hold.set()
    status, body = await in_flight
    assert status == 200 and body == sse
    await eventually(lambda: old_session.closed, what="removed provider's pool closed")
    assert old_runtime.closed


async def test_unchanged_provider_keeps_runtime_changed_one_is_replaced(
    tmp_path, hot, client, upstream_factory
):
    same_up, chg_up, new_up = [await upstream_factory() for _ in range(3)]
    sse = (SSE_FIXTURES / "reasoning.sse").read_bytes()
    hold = asyncio.Event()
    chg_up.replay(split_awkwardly(sse, seed=5), hold_open=hold)
    path = tmp_path / "gateway.yaml"
    path.write_text(config(provider_yaml("same", same_up), provider_yaml("chg", chg_up)))
    gw = await hot(path)

    assert (await post(client, gw, "same/m1"))[0] == 200
    same_rt = gw.holder.current.providers["same"]
    same_session = same_rt.session
    chg_rt = gw.holder.current.providers["chg"]
    in_flight = asyncio.create_task(post(client, gw, "chg/m1", stream=True))
    await eventually(lambda: len(chg_up.requests) == 1, what="stream reached upstream")
    chg_session = chg_rt.session

    path.write_text(config(provider_yaml("same", same_up), provider_yaml("chg", new_up)))
    await eventually(lambda: gw.holder.current.providers["chg"] is not chg_rt, what="reload")

    assert gw.holder.current.providers["same"] is same_rt
    assert same_rt.session is same_session and not same_session.closed
    assert (await post(client, gw, "same/m1"))[0] == 200
    assert same_rt.session is same_session, "unchanged provider: same pool"
    assert (await post(client, gw, "chg/m1"))[0] == 200 and len(new_up.requests) == 1
    assert gw.holder.current.providers["chg"].session is not chg_session
    assert not chg_session.closed, "old pool open while its request is in flight"

    hold.set()
    status, body = await in_flight
    assert status == 200 and body == sse
    await eventually(lambda: chg_session.closed, what="old pool closed after its last request")
    assert not same_session.closed


async def get_models(session: aiohttp.ClientSession, gw: GatewayUnderTest) -> list[str]:
    async with session.get(f"{gw.base_url}/models") as r:
        assert r.status == 200
        return [m["id"] for m in orjson.loads(await r.read())["data"]]


def model_fetches(up: Upstream) -> int:
    return len(up.model_list_fetches)


async def test_models_cache_refetched_only_for_changed_providers(
    tmp_path, hot, client, upstream_factory
):
    same_up = await upstream_factory(models=["s1"])
    old_up = await upstream_factory(models=["old1"])
    new_up = await upstream_factory(models=["new1"])
    path = tmp_path / "gateway.yaml"
    path.write_text(config(provider_yaml("same", same_up), provider_yaml("chg", old_up)))
    gw = await hot(path)
    assert await get_models(client, gw) == ["same/s1", "chg/old1"]
    assert await get_models(client, gw) == ["same/s1", "chg/old1"]  # cached
    assert model_fetches(same_up) == 1 and model_fetches(old_up) == 1

    path.write_text(config(provider_yaml("same", same_up), provider_yaml("chg", new_up)))
    await eventually(
        lambda: gw.holder.current.providers["chg"].config.base_url == new_up.base_url,
        what="reload",
    )
    assert await get_models(client, gw) == ["same/s1", "chg/new1"]
    assert model_fetches(new_up) == 1
    assert model_fetches(same_up) == 1, "unchanged provider's cache kept"
    assert model_fetches(old_up) == 1


async def test_model_listing_in_flight_survives_a_reload_of_its_provider(
    tmp_path, hot, client, upstream_factory
):
    """A listing that started before a reload keeps its provider's pool until it ends."""
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow_models(request: web.Request) -> web.Response:
        asked.set()
        await answer.wait()
        return web.json_response({"object": "list", "data": [{"id": "slow1"}]})

    app = web.Application()
    app.router.add_get("/v1/models", slow_models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        other = await upstream_factory()
        path = tmp_path / "gateway.yaml"

        def text(headers: dict) -> str:
            return config(
                f"  - name: slow\n    base_url: http://127.0.0.1:{port}/v1\n"
                f"    headers: {orjson.dumps(headers).decode()}\n"
            )

        path.write_text(text({"X-Gen": "1"}))
        gw = await hot(path)
        listing = asyncio.create_task(get_models(client, gw))
        await eventually(asked.is_set, what="listing reached upstream")
        old_session = gw.holder.current.providers["slow"].session

        path.write_text(text({"X-Gen": "2"}))
        await eventually(lambda: header(gw.holder.current, "slow", "X-Gen") == "2", what="reload")
        answer.set()
        assert await listing == ["slow/slow1"]
        await eventually(lambda: old_session.closed, what="old pool closed after the listing")
        assert other.requests == []
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------
# SIGHUP


async def test_sighup_reloads_at_once(tmp_path, upstream_factory, client):
    a, b = await upstream_factory(), await upstream_factory()
    path = tmp_path / "gateway.yaml"
    path.write_text(config(provider_yaml("a", a)))
    port = free_port()
    # The watcher polls once an hour here: only SIGHUP can make the change live.
    server = asyncio.create_task(
        serve(path, listen=f"127.0.0.1:{port}", shutdown_grace=1.0, watch_interval=3600)
    )
    url = f"http://127.0.0.1:{port}"
    try:

        async def up() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(f"{url}/healthz") as r:
                    return r.status == 200
            return False

        await eventually(up, timeout=10, what="gateway serving")
        # SIGHUP's default action kills the process: send it only once
        # serve() has its handler in place.
        await eventually(
            lambda: signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL, what="handler"
        )
        path.write_text(config(provider_yaml("a", a), provider_yaml("b", b)))
        os.kill(os.getpid(), signal.SIGHUP)

        async def b_routable() -> bool:
            async with client.post(
                f"{url}/v1/chat/completions", json={"model": "b/m1", "messages": []}
            ) as r:
                return r.status == 200

        await eventually(b_routable, what="provider added by SIGHUP")
        async with client.get(f"{url}/readyz") as r:
            ready = orjson.loads(await r.read())
        assert ready["reload"]["successes"] == 1
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
