"""Bench phase: what usage accounting and tracing cost, against both off, same run.

Three gateways on the proxy core, one upstream (the bench's upstream.py,
whose chat answer reports usage) on the load core:
- `off`: `usage: {enabled: false}`, no tracing (the baseline);
- `usage`: usage accounting on (the default);
- `tracing`: usage on and OpenTelemetry tracing on, every span sampled and
  exported over OTLP/HTTP (batched) to a loopback sink that answers 200.
Non-stream chat at c=64 in interleaved rounds (the order rotates each
round), so drift on a shared machine hits all three alike. Figures:
requests/s (median of rounds), the gateway's CPU per request (user +
system from /proc over the round, its exporter thread included, divided by
the requests counted), and per round the ratio to `off`. Target: each costs
at most 10% of requests/s.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import run as bench

TARGET_RATIO = 0.90
_SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
CONFIGS = {
    "off": "usage: {{enabled: false}}\n",
    "usage": "",
    "tracing": "tracing: {{enabled: true, endpoint: 'http://127.0.0.1:{sink}', "
    "service_name: bench}}\n",
}


def _spawn_gateway(
    procs: bench.Procs, tmp: Path, name: str, extra: str, upstream: int
) -> bench.Child:
    port = bench.free_port()
    config = tmp / f"gateway-usage-{name}.yaml"
    config.write_text(
        extra + "providers:\n"
        "  - name: bench\n"
        "    provider_type: custom\n"
        f"    base_url: http://{bench.HOST}:{upstream}/v1\n"
        f"    api_key: env:{bench.UPSTREAM_KEY_ENV}\n"
        f"    max_connections: {bench.POOL}\n"
        "    models: [bench-model]\n"
    )
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    argv += ["--listen", f"{bench.HOST}:{port}", "--shutdown-grace", "1"]
    core = procs.pin[0] if procs.pin else None
    env = {bench.UPSTREAM_KEY_ENV: "sk-bench-upstream", "GATEWAY_USAGE": ""}
    return procs.spawn(f"gateway-{name}", argv, port, core, env=env)


def phase_usage(procs: bench.Procs, tmp: Path, s: bench.Settings, wrk: str | None) -> dict:
    load_core = procs.pin[1] if procs.pin else None
    upstream = bench.spawn_kind("direct", procs, tmp, None)
    bench.wait_ready(upstream)
    sink_port = bench.free_port()
    sink = procs.spawn(
        "otlp-sink", [sys.executable, "-c", _SINK, str(sink_port)], sink_port, load_core
    )
    bench.wait_ready(sink)
    gateways = {
        name: _spawn_gateway(procs, tmp, name, extra.format(sink=sink_port), upstream.port)
        for name, extra in CONFIGS.items()
    }
    for g in gateways.values():
        bench.wait_ready(g)
    script = tmp / "post-usage.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in bench.CLIENT_HEADERS.items())
    script.write_text(bench.WRK_SCRIPT.format(body=bench.BODY.decode(), headers=headers))

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
        load(g, 1)  # warm-up: upstream connections, the exporter's first batch
    rounds = max(3, s.workers_rounds)
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
    for key in ("usage", "tracing"):
        # Per round, the ratio to `off`: drift between rounds cancels out.
        out[f"{key}_ratio"] = statistics.median(
            b["rps"] / a["rps"] for a, b in zip(runs["off"], runs[key], strict=True)
        )
    for child in (*gateways.values(), sink, upstream):
        procs.stop(child)
    return out


def rows(r: dict) -> list[bench.Row]:
    off, usage, tracing = r["off"], r["usage"], r["tracing"]
    out = [
        bench.Row("usage phase: c=64 chat JSON, interleaved rounds", None, None, str(r["rounds"])),
        bench.Row("requests/s, usage and tracing off", None, None, off["rps_median"], fmt="{:.0f}"),
        bench.Row("requests/s, usage on", None, None, usage["rps_median"], fmt="{:.0f}"),
        bench.Row(
            "requests/s, usage + tracing on", None, None, tracing["rps_median"], fmt="{:.0f}"
        ),
    ]
    for key, label in (("usage", "usage on"), ("tracing", "usage + tracing on")):
        ratio = r[f"{key}_ratio"]
        out.append(
            bench.Row(
                f"{label} / both off, requests/s (median of rounds)",
                None,
                None,
                f"{ratio:.3f}x",
                f">= {TARGET_RATIO:.2f}x",
                ratio >= TARGET_RATIO,
                ratios=False,
            )
        )
    out += [
        bench.Row(
            "gateway CPU per request (us), off / usage / tracing",
            None,
            None,
            " / ".join(f"{x['cpu_us_per_request_median']:.0f}" for x in (off, usage, tracing)),
            ratios=False,
        ),
        bench.Row(
            "errors, off / usage / tracing",
            None,
            None,
            " / ".join(str(x["errors"]) for x in (off, usage, tracing)),
            ratios=False,
        ),
    ]
    return out
