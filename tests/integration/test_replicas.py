"""Several replicas behind one provider, with three real loopback upstreams."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.proxy import replica_discovery
from tests.support import Upstream, dead_url, factory

CHUNKS = [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b'data: {"n":3}\n\n', b"data: [DONE]\n\n"]


class Replica(Upstream):
    """An upstream that can be started on a given address and port (to come back)."""

    host: str = "127.0.0.1"

    async def start_on(self, host: str = "127.0.0.1", port: int = 0) -> Replica:
        self.host = host
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def start(self) -> Replica:
        return await self.start_on()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


@pytest.fixture
async def replicas():
    """make(n) -> n started replicas."""
    async with factory(lambda: Replica().start()) as start:

        async def make(n: int = 3) -> list[Replica]:
            return [await start() for _ in range(n)]

        yield make


async def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll `condition` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def replica_gateway_config(urls: list[str], extra: str = "") -> str:
    """One provider, `pool`, over `urls`; `extra` is one more provider field."""
    listed = ", ".join(urls)
    return f"""
    admin:
      token: admin-test-token
    providers:
      - name: pool
        replicas: [{listed}]
        models: [m]
        {extra}
    """


def states(gw, name: str = "pool") -> dict[str, str]:
    return {r["url"]: r["state"] for r in gw.holder.current.providers[name].replicas_state()}


async def chat(session, gw, headers=None, **extra) -> tuple[int, bytes]:
    body = {"model": "pool/m", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with session.post(
        f"{gw.base_url}/chat/completions", json=body, headers=headers or {}
    ) as r:
        return r.status, await r.read()


async def test_a_slow_replica_gets_fewer_requests(gateway_factory, replicas):
    slow, fast1, fast2 = await replicas()

    async def slow_answer(request):
        await asyncio.sleep(0.1)  # the upstream's own slowness, not a wait in the test
        return web.json_response({"id": "x", "choices": []})

    slow.handler = slow_answer
    gw = await gateway_factory(replica_gateway_config([u.base_url for u in (slow, fast1, fast2)]))
    async with aiohttp.ClientSession() as s:

        async def worker():
            for _ in range(20):
                status, _ = await chat(s, gw)
                assert status == 200

        await asyncio.gather(*(worker() for _ in range(6)))
    counts = [len(u.requests) for u in (slow, fast1, fast2)]
    assert sum(counts) == 120
    assert counts[0] * 3 < min(counts[1:]), counts


async def test_a_killed_replica_is_ejected_then_rejoins(gateway_factory, replicas):
    ups = await replicas()
    for u in ups:
        u.replay(CHUNKS, delay=0.002)
    extra = "balancing: {eject_after: 2, eject_seconds: 0.1, eject_max_seconds: 0.2}"
    gw = await gateway_factory(replica_gateway_config([u.base_url for u in ups], extra))
    victim = ups[1]
    port = victim.port
    after_ejection: list[tuple[int, bytes]] = []
    ejected = asyncio.Event()
    stop = asyncio.Event()

    async def stream_forever(s):
        while not stop.is_set():
            started_after = ejected.is_set()
            status, body = await chat(s, gw, stream=True)
            if started_after:
                after_ejection.append((status, body))

    async with aiohttp.ClientSession() as s:
        load = [asyncio.create_task(stream_forever(s)) for _ in range(8)]
        await wait_for(lambda: len(victim.requests) >= 5, what="load on the victim")
        await victim.close()  # killed under load
        await wait_for(lambda: states(gw)[victim.base_url] == "ejected", what="ejection")
        ejected.set()
        await wait_for(lambda: len(after_ejection) >= 60, what="requests after the ejection")
        # Back on the same port: it rejoins without a reload.
        before = len(victim.requests)
        await victim.start_on(port=port)
        await wait_for(lambda: len(victim.requests) > before + 3, what="the replica rejoining")
        stop.set()
        await asyncio.gather(*load)
    bad = [(st, b) for st, b in after_ejection if st != 200 or not b.endswith(CHUNKS[-1])]
    assert bad == []
    assert states(gw)[victim.base_url] == "up"


async def test_affinity_keeps_a_session_on_one_replica(gateway_factory, replicas):
    ups = await replicas()
    extra = "balancing: {affinity: {header: X-Session-Id}}"
    gw = await gateway_factory(replica_gateway_config([u.base_url for u in ups], extra))
    async with aiohttp.ClientSession() as s:
        for i in range(60):
            await chat(s, gw, headers={"X-Session-Id": "conversation-1"})
            await chat(s, gw, headers={"X-Session-Id": f"other-{i}"})
    where: dict[str, set[int]] = {}
    for index, u in enumerate(ups):
        for r in u.requests:
            where.setdefault(r.headers["X-Session-Id"], set()).add(index)
    assert len(where["conversation-1"]) == 1  # 60 requests, one replica
    assert all(len(v) == 1 for v in where.values())
    others = Counter(next(iter(v)) for k, v in where.items() if k != "conversation-1")
    assert len(others) == 3 and min(others.values()) >= 5, others  # the rest is shared


async def test_retry_after_takes_a_replica_out_for_that_long(gateway_factory, replicas):
    limited, good = await replicas(2)

    async def too_many(request):
        return web.json_response(
            {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "3600"}
        )

    limited.handler = too_many
    extra = "balancing: {retry_after_max: 30}"
    gw = await gateway_factory(replica_gateway_config([limited.base_url, good.base_url], extra))
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            status, _ = await chat(s, gw)
            assert status == 200  # the 429 was retried on the other replica
    assert len(limited.requests) == 1
    assert len(good.requests) == 20
    (entry,) = [
        r
        for r in gw.holder.current.providers["pool"].replicas_state()
        if r["url"] == limited.base_url
    ]
    assert entry["state"] == "ejected"
    assert 20 < entry["ejected_until"] - time.time() <= 30  # capped at retry_after_max


async def test_every_replica_out_is_a_quick_503(gateway_factory):
    extra = "balancing: {eject_after: 1, eject_seconds: 60}"
    gw = await gateway_factory(replica_gateway_config([dead_url(), dead_url()], extra))
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, gw)
        assert status == 502  # both tried (one retry), both refused
        assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"
        t0 = time.monotonic()
        status, body = await chat(s, gw)
        elapsed = time.monotonic() - t0
    assert status == 503
    error = orjson.loads(body)["error"]
    assert error["code"] == "no_healthy_replica"
    assert error["type"] == "service_unavailable"
    assert "'pool'" in error["message"]
    assert elapsed < 0.5


async def test_replicas_are_visible_in_metrics_admin_and_readyz(gateway_factory, replicas):
    ups = await replicas(2)
    gw = await gateway_factory(replica_gateway_config([u.base_url for u in ups]))
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            assert (await chat(s, gw))[0] == 200
        async with s.get(f"{gw.url}/metrics") as r:
            text = await r.text()
        async with s.get(
            f"{gw.url}/admin/providers/pool",
            headers={"Authorization": "Bearer admin-test-token"},
        ) as r:
            admin = await r.json()
        async with s.get(f"{gw.url}/readyz") as r:
            ready = await r.json()
    for u in ups:
        label = f'provider="pool",replica="{u.base_url}"'
        assert f"gateway_replica_requests_total{{{label}}}" in text
        assert f"gateway_replica_ejected{{{label}}} 0.0" in text
    assert admin["replicas"] == [u.base_url for u in ups]
    assert [r["url"] for r in admin["replicas_state"]] == [u.base_url for u in ups]
    assert sum(r["requests"] for r in admin["replicas_state"]) == 4
    assert ready["replicas"] == {"pool": [{"url": u.base_url, "state": "up"} for u in ups]}


async def test_each_replica_gets_its_own_host_header(gateway_factory, replicas):
    ups = await replicas(2)
    ups[1].host = "localhost"  # the same server under another name
    gw = await gateway_factory(replica_gateway_config([u.base_url for u in ups]))
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            assert (await chat(s, gw))[0] == 200
    for u in ups:
        hosts = {r.headers["Host"] for r in u.requests}
        assert hosts <= {f"{u.host}:{u.port}"}, hosts


async def test_a_replica_failing_its_health_check_gets_no_traffic(gateway_factory, replicas):
    sick, well = await replicas(2)
    health = {"sick": 503}

    async def answer(request):
        if request.path == "/health":
            return web.Response(status=health["sick"])
        return web.json_response({"id": "x", "choices": []})

    sick.handler = answer
    extra = "health_check: {path: /health, interval: 0.1, timeout: 1}"
    gw = await gateway_factory(replica_gateway_config([sick.base_url, well.base_url], extra))
    await wait_for(lambda: states(gw)[sick.base_url] == "unhealthy", what="the check failing")
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            assert (await chat(s, gw))[0] == 200
    assert [r.path for r in sick.requests if r.path != "/health"] == []
    health["sick"] = 200
    await wait_for(lambda: states(gw)[sick.base_url] == "up", what="the check passing")


class FakeDNS:
    """The resolver the gateway uses in these tests: answers what the test says."""

    def __init__(self) -> None:
        self.answer: list[str] | Exception = []
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        assert host == "models.test"
        self.lookups += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


async def same_port_replicas(n: int) -> list[Replica]:
    """n upstreams on 127.0.0.1, .2, .3...: one port, as pods behind a Service."""
    for _ in range(20):
        first = await Replica().start_on("127.0.0.1")
        out = [first]
        try:
            for i in range(2, n + 1):
                out.append(await Replica().start_on(f"127.0.0.{i}", first.port))
            return out
        except OSError:
            for r in out:
                await r.close()
    raise AssertionError("no port free on every loopback address")


async def test_a_dns_name_resolving_to_several_pods(gateway_factory, monkeypatch):
    dns = FakeDNS()
    monkeypatch.setattr(replica_discovery, "RESOLVER", dns)
    pods = await same_port_replicas(3)
    try:
        dns.answer = ["127.0.0.1", "127.0.0.2"]
        gw = await gateway_factory(
            f"""
            providers:
              - name: pool
                base_url: http://models.test:{pods[0].port}/v1
                discovery: {{dns: true, interval: 0.5}}
                models: [m]
            """
        )
        rs = gw.holder.current.providers["pool"].replicas
        async with aiohttp.ClientSession() as s:
            for _ in range(12):
                assert (await chat(s, gw))[0] == 200
            assert [len(p.requests) > 0 for p in pods] == [True, True, False]
            assert {r.headers["Host"] for p in pods for r in p.requests} == {
                f"models.test:{pods[0].port}"
            }
            # A pod joins, without a reload.
            dns.answer = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            await wait_for(lambda: len(rs.replicas) == 3, what="the third pod joining")
            for _ in range(12):
                assert (await chat(s, gw))[0] == 200
            assert len(pods[2].requests) > 0
            # The name stops resolving: the last known set keeps serving.
            failures = rs.dns_failures
            dns.answer = OSError("Name or service not known")
            await wait_for(lambda: rs.dns_failures > failures, what="a failed lookup")
            assert len(rs.replicas) == 3
            dns.answer = []  # an empty answer does not empty the pool either
            await wait_for(lambda: rs.dns_failures > failures + 1, what="an empty answer")
            assert len(rs.replicas) == 3
            assert (await chat(s, gw))[0] == 200
            # Two pods leave.
            dns.answer = ["127.0.0.3"]
            await wait_for(lambda: len(rs.replicas) == 1, what="two pods leaving")
            counts = [len(p.requests) for p in pods]
            for _ in range(6):
                assert (await chat(s, gw))[0] == 200
            assert [len(p.requests) - c for p, c in zip(pods, counts, strict=True)] == [0, 0, 6]
    finally:
        for p in pods:
            await p.close()


async def test_a_reload_keeps_an_unchanged_replica_set(gateway_factory, replicas):
    ups = await replicas(2)
    config = replica_gateway_config([u.base_url for u in ups])
    gw = await gateway_factory(config)
    before = gw.holder.current.providers["pool"].replicas
    digest = gw.holder.current.digest
    gw.config_path.write_text(textwrap.dedent(config) + "# touched\n")
    assert gw.reloader.reload("test")
    assert gw.holder.current.digest != digest
    assert gw.holder.current.providers["pool"].replicas is before


async def test_replicas_through_the_admin_api(gateway_factory, replicas, tmp_path):
    ups = await replicas(2)
    (tmp_path / "api" / "providers.d").mkdir(parents=True)
    gw = await gateway_factory(
        "include: providers.d\nadmin:\n  token: admin-test-token\nproviders: []\n", subdir="api"
    )
    auth = {"Authorization": "Bearer admin-test-token"}
    record = {"name": "pool", "replicas": [ups[0].base_url, ups[0].base_url], "models": ["m"]}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.post(f"{gw.url}/admin/providers", json=record) as r:
            assert r.status == 422
            error = (await r.json())["error"]
        assert "replicas[1]" in (error.get("param"), error.get("field")), error
        assert "duplicate" in error["message"]
        record["replicas"] = [u.base_url for u in ups]
        record["balancing"] = {"affinity": {"field": "user"}}
        async with s.post(f"{gw.url}/admin/providers", json=record) as r:
            assert r.status == 201, await r.text()
        stored = (tmp_path / "api" / "providers.d" / "pool.yaml").read_text()
        assert "replicas:" in stored and "affinity:" in stored
        status, _ = await chat(s, gw, user="someone")
        assert status == 200
        async with s.get(f"{gw.url}/admin/providers/pool") as r:
            shown = await r.json()
    assert shown["replicas"] == record["replicas"]
    assert shown["balancing"] == {"affinity": {"field": "user"}}
    assert sum(x["requests"] for x in shown["replicas_state"]) == 1


async def test_a_name_that_never_resolved_is_a_503_naming_the_provider(
    gateway_factory, monkeypatch
):
    dns = FakeDNS()
    dns.answer = OSError("Name or service not known")
    monkeypatch.setattr(replica_discovery, "RESOLVER", dns)
    gw = await gateway_factory(
        """
        providers:
          - name: pool
            base_url: http://models.test:8000/v1
            discovery: {dns: true}
            models: [m]
        """
    )
    async with aiohttp.ClientSession() as s:
        status, body = await chat(s, gw)
    error = orjson.loads(body)["error"]
    assert (status, error["code"]) == (503, "no_healthy_replica")
    assert "'pool'" in error["message"] and "models.test" in error["message"]
    assert dns.lookups >= 1


async def test_a_stored_response_is_found_on_the_replica_that_made_it(gateway_factory, replicas):
    """`GET /v1/responses/{id}` asks each replica in turn until one has it: a
    stored response lives on one replica, and the others answer 404."""
    ups = await replicas()
    owner = ups[1]

    async def stored(request):
        if request.path.endswith("/responses/resp_kept1"):
            return web.json_response({"id": "resp_kept1", "object": "response"})
        return web.json_response({"error": {"message": "not found"}}, status=404)

    async def unknown(request):
        return web.json_response({"error": {"message": "not found"}}, status=404)

    for u in ups:
        u.handler = stored if u is owner else unknown
    gw = await gateway_factory(replica_gateway_config([u.base_url for u in ups]))
    async with aiohttp.ClientSession() as s:
        for _ in range(6):  # picking alone would send some of these elsewhere
            async with s.get(f"{gw.base_url}/responses/resp_kept1") as r:
                assert r.status == 200
                assert (await r.json())["id"] == "resp_kept1"
        async with s.get(f"{gw.base_url}/responses/resp_nowhere") as r:
            assert r.status == 404  # every replica asked, none has it
    assert len(owner.requests) == 7
    assert sum(len(u.requests) for u in ups) <= 6 * 3 + 3
    # The replicas that answered 404 are not counted as failing.
    assert set(states(gw).values()) == {"up"}
