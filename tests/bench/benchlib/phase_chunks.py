"""Bench phase: CPU per relayed SSE chunk, against the minimal forwarder and nginx.

LLM traffic is long streams of small chunks, so the figure that decides how
many streams a core carries is the CPU a proxy spends per relayed chunk.
This phase starts its own upstream (200 events, 5 ms apart), the gateway,
the minimal forwarder and, when installed, nginx with `proxy_buffering off`
(Debian: `apt-get install -y nginx-light`), all on the proxies' core. In
interleaved rounds it sends 100 concurrent streams through each and reads
the proxy's CPU time (user + system) from /proc before and after: CPU
seconds, not wall time, so the figure holds on a noisy machine. The bytes
every client received are checked against the upstream's.

Then a ramp: streams at 50 chunks/s each, more and more at once, to find
how many one proxy core carries before time to first token degrades (p95
over twice the p95 at the lowest level, or the proxy's core busy over 90%).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchlib.common import HERE, STREAM_BODY, Settings, pct, raw_request, rotate, say
from benchlib.loadclient import HttpConn, Reply, connect_many, run_async
from benchlib.machine import cpu_seconds, process_tree
from benchlib.phase_one import one_at_a_time
from benchlib.phase_one import rows as one_rows
from benchlib.processes import (
    Child,
    Procs,
    Target,
    free_port,
    spawn_kind,
    spawn_upstream,
    wait_ready,
)
from benchlib.report import Row

STREAMS = 100
CHUNKS = 200
INTERVAL = 0.005
RAMP_CHUNKS = 50
RAMP_INTERVAL = 0.02  # 50 chunks/s per stream
NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream bench {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /readyz {{ return 200 '{{"status":"ready"}}'; }}
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def spawn_nginx(procs: Procs, tmp: Path, upstream_port: int) -> Child | None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        return None
    port = free_port()
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=upstream_port, port=port))
    core = procs.pin[0] if procs.pin else None
    return procs.spawn(
        "nginx", [nginx, "-c", str(conf), "-e", str(tmp / "nginx-stderr.log")], port, core
    )


def _upstream(procs: Procs, chunks: int, interval: float) -> Child:
    return spawn_upstream(
        procs, "upstream-chunks", procs.pin[1] if procs.pin else None, chunks, interval
    )


def spawn_floor(procs: Procs, upstream_port: int) -> Child:
    """floor_relay.py: bytes through as read, no HTTP (what this stack costs
    before a proxy does anything)."""
    port = free_port()
    argv = [sys.executable, str(HERE / "floor_relay.py"), "--port", str(port)]
    argv += ["--upstream-port", str(upstream_port)]
    return procs.spawn("floor-relay", argv, port, procs.pin[0] if procs.pin else None)


def start_targets(procs: Procs, tmp: Path, upstream_port: int, floor: bool = True) -> list[Target]:
    """The proxies in front of `upstream_port`: the minimal forwarder, the
    gateway, nginx when installed and, with `floor`, the floor relay."""
    targets = []
    for kind, label in (("fwd", "minimal fwd"), ("gw", "gateway")):
        child = spawn_kind(kind, procs, tmp, upstream_port)
        wait_ready(child)
        targets.append(Target(kind, label, child))
    nginx = spawn_nginx(procs, tmp, upstream_port)
    if nginx is None:
        say("  nginx not installed (Debian: apt-get install -y nginx-light): its column is empty")
    else:
        wait_ready(nginx)
        targets.append(Target("nginx", "nginx", nginx))
    if floor:
        child = spawn_floor(procs, upstream_port)
        wait_ready(child)  # the upstream's /readyz, through it
        targets.append(Target("floor", "floor relay", child))
    return targets


async def _burst(port: int, req: bytes, n: int) -> tuple[list, int]:
    conns = await connect_many(port, n)
    try:
        tasks = [asyncio.create_task(asyncio.wait_for(c.request(req), 120)) for c in conns]
        replies = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for c in conns:
            c.close()
    ok = [r for r in replies if isinstance(r, Reply) and r.status == 200]
    return ok, len(replies) - len(ok)


def cpu_round(t: Target, req: bytes, expected: str) -> dict:
    """One burst of STREAMS streams through `t`: its CPU seconds, errors, bytes."""
    pids = process_tree(t.child.pid)

    async def main() -> tuple[list, int, float]:
        # Connections are opened before the clock starts: accepting them is
        # not what this phase measures.
        conns = await connect_many(t.port, STREAMS)
        before = cpu_seconds(pids)
        try:
            tasks = [asyncio.wait_for(c.request(req), 120) for c in conns]
            replies = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for c in conns:
                c.close()
        used = cpu_seconds(pids) - before
        return replies, 0, used

    replies, _, used = run_async(main())
    ok = [r for r in replies if isinstance(r, Reply) and r.status == 200]
    wrong = sum(hashlib.sha256(r.body).hexdigest() != expected for r in ok)
    return {
        "cpu_s": used,
        "errors": len(replies) - len(ok),
        "bytes_differ": wrong,
        "ttfb_p50_ms": statistics.median(r.ttfb for r in ok) * 1000 if ok else float("nan"),
    }


async def _sustain(port: int, req: bytes, n: int, seconds: float) -> tuple[list[float], int]:
    """`n` clients each streaming back to back for `seconds`, their starts
    spread over one stream's length (a steady load, not a burst): the TTFT
    of every stream that started after the first stream length."""
    conns = await connect_many(port, n)
    stream_s = RAMP_CHUNKS * RAMP_INTERVAL
    t0 = time.perf_counter()
    ttfts: list[float] = []
    errors = 0

    async def client(i: int, c: HttpConn) -> None:
        nonlocal errors
        await asyncio.sleep(stream_s * i / n)
        while time.perf_counter() - t0 < seconds:
            started = time.perf_counter()
            try:
                r = await asyncio.wait_for(c.request(req), 30)
            except (OSError, ValueError):
                errors += 1
                return
            if r.status != 200:
                errors += 1
            elif started - t0 > stream_s:
                ttfts.append(r.ttfb * 1000)

    try:
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            c.close()
    return ttfts, errors


def ramp(t: Target, req: bytes, levels: list[int], seconds: float) -> dict:
    """Streams at 50 chunks/s, more at each level: TTFT and the proxy's CPU share."""
    pids = process_tree(t.child.pid)
    out: dict = {"levels": []}
    base_p50 = None
    carried = 0
    for n in levels:

        async def main(n: int = n) -> tuple[list[float], int, float, float]:
            before, t0 = cpu_seconds(pids), time.perf_counter()
            ttfts, errors = await _sustain(t.port, req, n, seconds)
            return ttfts, errors, cpu_seconds(pids) - before, time.perf_counter() - t0

        ttfts, errors, cpu, wall = run_async(main())
        ttfts.sort()
        p50 = pct(ttfts, 50) if ttfts else float("nan")
        p95 = pct(ttfts, 95) if ttfts else float("nan")
        busy = cpu / wall if wall else float("nan")
        if base_p50 is None:
            base_p50 = p50
        # The median, not a tail: on a shared 2-core machine one hiccup moves
        # a p95 by hundreds of ms; a proxy out of CPU moves the median.
        degraded = errors > 0 or not ttfts or p50 > max(2 * base_p50, base_p50 + 2) or busy > 0.9
        out["levels"].append(
            {
                "streams": n,
                "errors": errors,
                "ttft_p50_ms": p50,
                "ttft_p95_ms": p95,
                "proxy_cpu_busy": busy,
                "degraded": degraded,
            }
        )
        say(
            f"  {t.key}: {n} streams at 50 chunks/s: TTFT p50 {p50:.1f} ms p95 {p95:.1f} ms, "
            f"proxy core {busy:.0%} busy, {errors} errors{' (degraded)' if degraded else ''}"
        )
        if degraded:
            break
        carried = n
    out["carried"] = carried
    return out


def phase_chunks(procs: Procs, tmp: Path, s: Settings) -> dict:
    upstream = _upstream(procs, CHUNKS, INTERVAL)
    wait_ready(upstream)
    targets = start_targets(procs, tmp, upstream.port)
    req = raw_request(upstream.port, STREAM_BODY)
    first = run_async(_burst(upstream.port, req, 1))[0]
    if not first:
        raise RuntimeError("the chunk phase's upstream failed a stream")
    expected = hashlib.sha256(first[0].body).hexdigest()
    events = first[0].body.count(b"data: ")
    rounds: dict[str, list[dict]] = {t.key: [] for t in targets}
    for t in targets:  # warm-up: pools, caches
        cpu_round(t, raw_request(t.port, STREAM_BODY), expected)
    for r in range(max(3, s.rounds * 3)):
        for t in rotate(targets, r):
            rounds[t.key].append(cpu_round(t, raw_request(t.port, STREAM_BODY), expected))
    out: dict = {"streams": STREAMS, "events_per_stream": events, "targets": {}}
    for t in targets:
        rs = rounds[t.key]
        per_stream = statistics.median(x["cpu_s"] for x in rs) / STREAMS
        out["targets"][t.key] = {
            "cpu_us_per_chunk": per_stream / events * 1e6,
            "cpu_us_per_stream": per_stream * 1e6,
            "cpu_us_per_chunk_rounds": [x["cpu_s"] / STREAMS / events * 1e6 for x in rs],
            "errors": sum(x["errors"] for x in rs),
            "bytes_differ": sum(x["bytes_differ"] for x in rs),
        }
    # Per round, the ratios of CPU seconds for the same streams, then their
    # median: the targets are ratios, and drift between rounds cancels.
    for name, a, b in (
        ("gw_over_nginx", "gw", "nginx"),
        ("fwd_over_gw", "fwd", "gw"),
        ("floor_over_nginx", "floor", "nginx"),
        ("gw_over_floor", "gw", "floor"),
    ):
        if a in rounds and b in rounds:
            out[name] = statistics.median(
                x["cpu_s"] / y["cpu_s"] for x, y in zip(rounds[a], rounds[b], strict=True)
            )
    short = _upstream(procs, 3, INTERVAL)
    wait_ready(short)
    proxies = start_targets(procs, tmp, short.port)
    out["ttfb_c1"] = one_at_a_time(short, proxies, s)
    for child in (*(t.child for t in proxies), short, *(t.child for t in targets), upstream):
        procs.stop(child)  # idle processes on the proxies' core skew the ramp
    ramp_up = _upstream(procs, RAMP_CHUNKS, RAMP_INTERVAL)
    wait_ready(ramp_up)
    levels = [25, 100, 200, 400] if s.quick else [25, 100, 200, 300, 400, 600, 800, 1000]
    seconds = 3.0 if s.quick else 5.0
    ramp_targets = start_targets(procs, tmp, ramp_up.port, floor=False)
    for t in ramp_targets:
        out["targets"][t.key]["ramp"] = ramp(t, raw_request(t.port, STREAM_BODY), levels, seconds)
    return out


def _floor(res: dict) -> str:
    floor = res["targets"].get("floor")
    if floor is None or "floor_over_nginx" not in res:
        return "n/a"
    return (
        f"{floor['cpu_us_per_chunk']:.1f} us, {res['floor_over_nginx']:.2f}x "
        f"and {res['gw_over_floor']:.2f}x"
    )


def rows(res: dict) -> list[Row]:
    t = res["targets"]

    def get(key: str, field: str) -> float | None:
        return t[key][field] if key in t else None

    gw, fwd, ngx = (get(k, "cpu_us_per_chunk") for k in ("gw", "fwd", "nginx"))
    vs_nginx, fwd_over_gw = res.get("gw_over_nginx"), res["fwd_over_gw"]
    out = [
        Row(
            f"chunks: CPU us per relayed chunk ({res['streams']} streams x "
            f"{res['events_per_stream']} events, 5 ms apart); direct column = nginx",
            ngx if ngx is not None else "n/a",
            fwd,
            gw,
            fmt="{:.1f}",
        ),
        Row(
            "chunks: CPU per chunk, gw / nginx and fwd / gw (median of per-round ratios)",
            None,
            None,
            f"{'n/a' if vs_nginx is None else f'{vs_nginx:.2f}x'} and {fwd_over_gw:.2f}x",
            target="gw <= 1.25x nginx and fwd >= 1.5x gw",
            passed=(vs_nginx is None or vs_nginx <= 1.25) and fwd_over_gw >= 1.5,
            ratios=False,
        ),
        Row(
            "chunks: the floor relay (floor_relay.py: bytes as read, no HTTP): CPU us per "
            "chunk, floor / nginx and gw / floor (median of per-round ratios)",
            None,
            None,
            _floor(res),
            ratios=False,
        ),
        Row(
            "chunks: CPU us per stream request; direct column = nginx",
            get("nginx", "cpu_us_per_stream") or "n/a",
            get("fwd", "cpu_us_per_stream"),
            get("gw", "cpu_us_per_stream"),
            fmt="{:.0f}",
        ),
    ]
    # The proxies' (the floor relay's bytes are the upstream's by construction).
    errors = sum(x["errors"] + x["bytes_differ"] for k, x in t.items() if k != "floor")
    out.append(
        Row(
            "chunks: errors or differing bytes (all)",
            None,
            None,
            str(errors),
            target="0",
            passed=errors == 0,
            ratios=False,
        )
    )
    carried = {k: v["ramp"]["carried"] for k, v in t.items() if "ramp" in v}
    out.append(
        Row(
            "chunks: streams at 50 chunks/s one core carries before TTFT degrades; direct = nginx",
            str(carried.get("nginx", "n/a")),
            str(carried.get("fwd")),
            str(carried.get("gw")),
            ratios=False,
            note="capped by the ramp's top level and the load core",
        )
    )
    tt = res.get("ttfb_c1")
    if tt:
        out.append(
            Row(
                "chunks: added stream TTFB c=1, p50 ms, vs direct; direct column = nginx",
                tt.get("nginx", {}).get("added_p50_ms", "n/a"),
                tt["fwd"]["added_p50_ms"],
                tt["gw"]["added_p50_ms"],
                target="gw <= 0.5 ms",
                passed=tt["gw"]["added_p50_ms"] <= 0.5,
                fmt="{:.3f}",
            )
        )
        out += one_rows(tt)
    return out
