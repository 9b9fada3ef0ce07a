"""Bench phase: one provider over three replicas against one base_url, same run.

One upstream process (the bench's upstream.py) serving on three ports, on
the load core: three processes there would compete with wrk and each other
and cost the load side, not the gateway, more per request. Two
gateways on the proxy core, side by side: `single` has `base_url` on the
first upstream, `replicas` lists all three (least outstanding, passive
ejection: the defaults). Non-stream chat at c=64 in interleaved rounds
(single, replicas, replicas, single...), so drift on a shared machine hits
both alike. Figures: requests/s (median of rounds) and the gateway's CPU
per request (user + system from /proc over the round, divided by the
requests wrk counted). Target: replicas at most 10% fewer requests/s.

The replicas are three ports (three Host lines, three pools) of the same
server, so both gateways meet the same upstream, and the figures compare
the gateway's own cost of picking a replica.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from benchlib.common import CHUNKS, HERE, HOST, INTERVAL, Settings
from benchlib.compare import interleaved, round_ratio
from benchlib.loadclient import write_wrk_script
from benchlib.processes import Child, Procs, free_port, gateway_yaml, spawn_gateway, wait_ready
from benchlib.report import Row

TARGET_RATIO = 0.90
_MULTI_PORT_UPSTREAM = """
import asyncio, sys
sys.path.insert(0, {here!r})
import upstream
try:
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
except ImportError:
    pass
async def main():
    await asyncio.gather(*(upstream.serve(p, {chunks}, {interval}) for p in {ports!r}))
asyncio.run(main())
"""


def _spawn_upstream(procs: Procs) -> list[Child]:
    """One upstream process on three ports; a Child per port (one process)."""
    ports = [free_port() for _ in range(3)]
    code = _MULTI_PORT_UPSTREAM.format(
        here=str(HERE), chunks=CHUNKS, interval=INTERVAL, ports=ports
    )
    core = procs.pin[1] if procs.pin else None
    child = procs.spawn("upstream-3-ports", [sys.executable, "-c", code], ports[0], core)
    views = [dataclasses.replace(child, port=p) for p in ports]
    for view in views:
        wait_ready(view)
    return views


def _spawn_gateway(procs: Procs, tmp: Path, name: str, where: str) -> Child:
    config = tmp / f"gateway-{name}.yaml"
    config.write_text(gateway_yaml(where))
    return spawn_gateway(procs, f"gateway-{name}", config, procs.pin[0] if procs.pin else None)


def phase_replicas(procs: Procs, tmp: Path, s: Settings, wrk: str | None) -> dict:
    upstreams = _spawn_upstream(procs)
    urls = [f"http://{HOST}:{u.port}/v1" for u in upstreams]
    gateways = {
        "single": _spawn_gateway(procs, tmp, "single", f"    base_url: {urls[0]}\n"),
        "replicas": _spawn_gateway(procs, tmp, "replicas", f"    replicas: [{', '.join(urls)}]\n"),
    }
    for g in gateways.values():
        wait_ready(g)
    script = write_wrk_script(tmp / "post-replicas.lua")
    # The warm-up opens connections to every replica.
    out, runs = interleaved(gateways, max(2, s.workers_rounds), s.wrk_seconds, wrk, procs, script)
    # Per round, the ratio of the two: drift between rounds cancels out.
    out["ratio"] = round_ratio(runs, "single", "replicas")
    for g in gateways.values():
        procs.stop(g)
    procs.stop(upstreams[0])
    return out


def rows(r: dict) -> list[Row]:
    single, replicas = r["single"], r["replicas"]
    return [
        Row("replicas phase: c=64 chat JSON, interleaved rounds", None, None, str(r["rounds"])),
        Row("requests/s, one base_url", None, None, single["rps_median"], fmt="{:.0f}"),
        Row("requests/s, 3 replicas", None, None, replicas["rps_median"], fmt="{:.0f}"),
        Row(
            "3 replicas / one base_url, requests/s (median of rounds)",
            None,
            None,
            f"{r['ratio']:.3f}x",
            f">= {TARGET_RATIO:.2f}x",
            r["ratio"] >= TARGET_RATIO,
            ratios=False,
        ),
        Row(
            "gateway CPU per request (us), one base_url / 3 replicas",
            None,
            None,
            f"{single['cpu_us_per_request_median']:.0f} / "
            f"{replicas['cpu_us_per_request_median']:.0f}",
            ratios=False,
        ),
        Row(
            "errors, one base_url / 3 replicas",
            None,
            None,
            f"{single['errors']} / {replicas['errors']}",
            ratios=False,
        ),
    ]
