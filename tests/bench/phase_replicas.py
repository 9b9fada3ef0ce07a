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
import statistics
import sys
from pathlib import Path

import run as bench

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


def _spawn_upstream(procs: bench.Procs) -> list[bench.Child]:
    """One upstream process on three ports; a Child per port (one process)."""
    ports = [bench.free_port() for _ in range(3)]
    code = _MULTI_PORT_UPSTREAM.format(
        here=str(bench.HERE), chunks=bench.CHUNKS, interval=bench.INTERVAL, ports=ports
    )
    core = procs.pin[1] if procs.pin else None
    child = procs.spawn("upstream-3-ports", [sys.executable, "-c", code], ports[0], core)
    views = [dataclasses.replace(child, port=p) for p in ports]
    for view in views:
        bench.wait_ready(view)
    return views


def _spawn_gateway(procs: bench.Procs, tmp: Path, name: str, where: str) -> bench.Child:
    port = bench.free_port()
    config = tmp / f"gateway-{name}.yaml"
    config.write_text(
        "providers:\n"
        "  - name: bench\n"
        "    provider_type: custom\n"
        f"{where}"
        f"    api_key: env:{bench.UPSTREAM_KEY_ENV}\n"
        f"    max_connections: {bench.POOL}\n"
    )
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    argv += ["--listen", f"{bench.HOST}:{port}", "--shutdown-grace", "1"]
    core = procs.pin[0] if procs.pin else None
    env = {bench.UPSTREAM_KEY_ENV: "sk-bench-upstream"}
    return procs.spawn(f"gateway-{name}", argv, port, core, env=env)


def phase_replicas(procs: bench.Procs, tmp: Path, s: bench.Settings, wrk: str | None) -> dict:
    upstreams = _spawn_upstream(procs)
    urls = [f"http://{bench.HOST}:{u.port}/v1" for u in upstreams]
    gateways = {
        "single": _spawn_gateway(procs, tmp, "single", f"    base_url: {urls[0]}\n"),
        "replicas": _spawn_gateway(procs, tmp, "replicas", f"    replicas: [{', '.join(urls)}]\n"),
    }
    for g in gateways.values():
        bench.wait_ready(g)
    script = tmp / "post-replicas.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in bench.CLIENT_HEADERS.items())
    script.write_text(bench.WRK_SCRIPT.format(body=bench.BODY.decode(), headers=headers))
    load_core = procs.pin[1] if procs.pin else None

    def load(child: bench.Child, seconds: int) -> dict:
        pids = bench.process_tree(child.pid)
        before = bench.cpu_seconds(pids)
        if wrk:
            result = bench.run_wrk(wrk, procs.prefix(load_core), script, child.port, seconds, 64)
        else:
            result = bench.python_load(child.port, seconds, 64)
        cpu = bench.cpu_seconds(pids) - before
        result["cpu_us_per_request"] = cpu / max(result.get("requests", 0), 1) * 1e6
        return result

    for g in gateways.values():
        load(g, 1)  # warm-up: connections to every replica
    rounds = max(2, s.workers_rounds)
    runs: dict[str, list[dict]] = {k: [] for k in gateways}
    for r in range(rounds):
        for key in bench.rotate(list(gateways), r):
            runs[key].append(load(gateways[key], s.wrk_seconds))
    out: dict = {"rounds": rounds}
    for key, rs in runs.items():
        out[key] = {
            "rps_median": statistics.median(x["rps"] for x in rs),
            "cpu_us_per_request_median": statistics.median(x["cpu_us_per_request"] for x in rs),
            "errors": sum(x.get("non_2xx", 0) + x.get("socket_errors", 0) for x in rs),
            "runs": rs,
        }
    # Per round, the ratio of the two: drift between rounds cancels out.
    out["ratio"] = statistics.median(
        b["rps"] / a["rps"] for a, b in zip(runs["single"], runs["replicas"], strict=True)
    )
    for g in gateways.values():
        procs.stop(g)
    procs.stop(upstreams[0])
    return out


def rows(r: dict) -> list[bench.Row]:
    single, replicas = r["single"], r["replicas"]
    return [
        bench.Row(
            "replicas phase: c=64 chat JSON, interleaved rounds", None, None, str(r["rounds"])
        ),
        bench.Row("requests/s, one base_url", None, None, single["rps_median"], fmt="{:.0f}"),
        bench.Row("requests/s, 3 replicas", None, None, replicas["rps_median"], fmt="{:.0f}"),
        bench.Row(
            "3 replicas / one base_url, requests/s (median of rounds)",
            None,
            None,
            f"{r['ratio']:.3f}x",
            f">= {TARGET_RATIO:.2f}x",
            r["ratio"] >= TARGET_RATIO,
            ratios=False,
        ),
        bench.Row(
            "gateway CPU per request (us), one base_url / 3 replicas",
            None,
            None,
            f"{single['cpu_us_per_request_median']:.0f} / "
            f"{replicas['cpu_us_per_request_median']:.0f}",
            ratios=False,
        ),
        bench.Row(
            "errors, one base_url / 3 replicas",
            None,
            None,
            f"{single['errors']} / {replicas['errors']}",
            ratios=False,
        ),
    ]
