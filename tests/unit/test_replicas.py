"""Replicas: config rules, the consistent-hash ring, the picker and ejection."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest

from gateway.config import parse_provider
from gateway.config.replicas import Affinity
from gateway.proxy.replica_ring import Ring, affinity_key, hash64, header_pattern
from gateway.proxy.replica_send import retry_after
from gateway.snapshot import ProviderRuntime

A, B, C = (f"http://10.0.0.{i}:8000/v1" for i in (1, 2, 3))


def problems(**fields) -> list[tuple[str | None, str]]:
    raw = {"name": "p", "provider_type": "custom", **fields}
    _, found = parse_provider(raw, "providers.d/p.yaml")
    return [(p.field, p.message) for p in found]


def parsed(**fields):
    raw = {"name": "p", "provider_type": "custom", **fields}
    provider, found = parse_provider(raw, "providers.d/p.yaml")
    assert found == []
    return provider


def test_a_list_of_replicas_needs_no_base_url():
    p = parsed(replicas=[A, B + "/"])
    assert p.base_url == A
    assert p.replicas.urls == (A, B)
    assert p.replicas.enabled


def test_one_base_url_has_no_replica_set():
    p = parsed(base_url=A)
    assert not p.replicas.enabled
    assert ProviderRuntime(p, None).replicas is None


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"replicas": [A, A]}, "replicas[1]", "duplicate of replicas[0]"),
        ({"replicas": [A, "http://10.0.0.2:8000/v2"]}, "replicas[1]", "same scheme and path"),
        ({"replicas": [A, "https://10.0.0.2:8000/v1"]}, "replicas[1]", "same scheme and path"),
        ({"replicas": [A, "ftp://x/v1"]}, "replicas[1]", "http:// or https://"),
        ({"replicas": [A, "http://10.0.0.2:0/v1"]}, "replicas[1]", "port 0"),
        ({"replicas": [A]}, "replicas", "2 to 256"),
        ({"replicas": [A, B], "base_url": C}, "base_url", "one of them"),
        ({"base_url": A, "discovery": {"dns": True}}, "discovery.dns", "DNS host"),
        ({"replicas": [A, B], "discovery": {"dns": True}}, "discovery", "not both"),
        ({"base_url": A, "balancing": {"eject_after": 2}}, "balancing", "only with replicas"),
        ({"replicas": [A, B], "balancing": {"eject_after": 0}}, "balancing.eject_after", ">"),
        (
            {"replicas": [A, B], "balancing": {"affinity": {"cookie": "x"}}},
            "balancing.affinity",
            "",
        ),
        ({"replicas": [A, B], "health_check": {"path": "health"}}, "health_check.path", ""),
        ({"replicas": [A, B], "balancing": {"spread": 1}}, "balancing.spread", "unknown key"),
    ],
)
def test_replica_mistakes_name_the_field(fields, field, words):
    found = problems(**fields)
    assert any(f == field and words.replace(">", "greater") in m for f, m in found), found


def test_affinity_and_health_check_forms():
    p = parsed(
        replicas=[A, B],
        balancing={"affinity": {"field": "user"}},
        health_check={"path": "/v1/models", "interval": 5},
    )
    assert p.replicas.affinity == Affinity("user")
    assert p.replicas.health_check.path == "/v1/models"
    assert parsed(replicas=[A, B], balancing={"affinity": {"prefix_bytes": 256}}).replicas.affinity
    dns = parsed(base_url="http://vllm.models.svc:8000/v1", discovery={"dns": True, "interval": 3})
    assert dns.replicas.dns and dns.replicas.dns_interval == 3


def test_the_ring_moves_only_the_share_of_a_replica_that_leaves():
    names = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 6)]
    before = Ring(names)
    after = Ring(names[:-1])  # the last one leaves
    keys = [hash64(str(i).encode()) for i in range(5000)]
    moved = 0
    for key in keys:
        old = before.owner(key)
        new = after.owner(key)
        if old != 4:
            assert new == old  # keys of the replicas that stayed do not move
        else:
            moved += 1
    share = Counter(before.owner(k) for k in keys)
    assert all(600 < n < 1400 for n in share.values()), share  # about 1/5 each
    assert moved == share[4]


def test_affinity_keys():
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-session-ID:  abc \r\n\r\n"
    header = Affinity("header", header="X-Session-Id")
    assert affinity_key(header, header_pattern("X-Session-Id"), head, b"{}") == hash64(b"abc")
    assert affinity_key(header, header_pattern("X-Other"), head, b"{}") is None
    user = Affinity("user")
    assert affinity_key(user, None, head, b'{"user":"u1","model":"m"}') == hash64(b"u1")
    assert affinity_key(user, None, head, b'{"model":"m"}') is None
    prefix = Affinity("prefix", prefix_bytes=8)
    a = affinity_key(prefix, None, head, b'{"model":"a","messages":[{"role":"system"}]}')
    b = affinity_key(prefix, None, head, b'{"model":"b","messages":[{"role":"system","x":1}]}')
    assert a == b  # same first bytes of the prompt, whatever else differs


def test_retry_after_forms():
    assert retry_after("120") == 120.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 < retry_after(when) <= 60


async def started_set(**balancing):
    p = parsed(replicas=[A, B, C], balancing=balancing or None)
    rs = ProviderRuntime(p, None).replicas
    rs.start()
    for r in rs.replicas:
        r.pool.close()
        r.pool = SimpleNamespace(outstanding=0)
    return rs


async def test_the_least_busy_replica_is_picked_and_equals_share():
    rs = await started_set()
    a, b, c = rs.replicas
    a.pool.outstanding, b.pool.outstanding, c.pool.outstanding = 3, 1, 2
    assert {rs.pick() for _ in range(50)} == {b}
    a.pool.outstanding = b.pool.outstanding = c.pool.outstanding = 0
    assert Counter(rs.pick().url for _ in range(3000)).keys() == {A, B, C}
    assert rs.pick(exclude=a) is not a


async def test_ejection_backs_off_and_a_trial_brings_it_back():
    rs = await started_set(eject_after=2, eject_seconds=10, eject_max_seconds=25)
    a = rs.replicas[0]
    now = asyncio.get_running_loop().time()
    rs.failed(a, "connect")
    assert a.available(now)  # one failure is not enough
    rs.failed(a, "connect")
    assert a.state(now) == "ejected" and 9 < a.ejected_until - now <= 10.1
    assert all(rs.pick() is not a for _ in range(30))
    a.ejected_until = 0  # its time is up: on trial
    rs.failed(a, "connect")  # one failure on trial ejects it again, for longer
    assert 19 < a.ejected_until - now <= 20.1
    a.ejected_until = 0
    rs.failed(a, "connect")
    assert a.ejected_until - now <= 25.1  # capped
    a.ejected_until = 0
    rs.succeeded(a)
    assert a.backoff == 0 and a.state(now) == "up"
    rs.failed(a, "connect")
    assert a.available(now)  # back to needing eject_after in a row


async def test_every_replica_out_picks_none():
    rs = await started_set(eject_after=1)
    for r in rs.replicas:
        rs.failed(r, "connect")
    assert rs.pick() is None


def test_replica_figures_are_summed_across_workers():
    from gateway.metrics import Metrics

    # A row: provider, url, in_flight, requests, errors, ejections, ejected.
    workers = []
    for in_flight in (2, 3):
        m = Metrics()
        m.replica_rows = lambda n=in_flight: [
            ["pool", A, n, 10, 1, 1, 1],
            ["pool", B, 0, 5, 0, 0, 0],
        ]
        workers.append(m)
    merged = Metrics()
    for m in workers:
        merged.add_state(m.state())
    assert merged.replicas() == [["pool", A, 5, 20, 2, 2, 2], ["pool", B, 0, 10, 0, 0, 0]]
    text = merged.render().decode()
    assert f'gateway_replica_requests_total{{provider="pool",replica="{A}"}} 20.0' in text
    assert f'gateway_replica_inflight_requests{{provider="pool",replica="{B}"}} 0.0' in text
