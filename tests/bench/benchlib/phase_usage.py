"""Bench phase: what usage accounting and tracing cost, against both off, same run.

Five gateways on the proxy core, one upstream (the bench's upstream.py,
whose chat answer reports usage) on the load core:
- `off`: `usage: {enabled: false}`, no tracing (the baseline);
- `control`: the same as `off` again, so the run shows its own noise floor;
- `usage`: usage accounting on (the default);
- `tracing`: usage on and OpenTelemetry tracing on, every span sampled and
  exported over OTLP/HTTP (batched) to a loopback sink that answers 200;
- `tracing_alone`: the same tracing with usage accounting off.
Non-stream chat at c=64 in interleaved rounds (the order rotates each
round), so drift on a shared machine hits all five alike. Figures:
requests/s (median of rounds), the gateway's CPU per request (user +
system from /proc over the round, its exporter thread included, divided by
the requests counted), and per round the ratio to `off`. Target: each costs
at most 10% of requests/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchlib.common import HOST, Settings
from benchlib.compare import interleaved, round_ratio
from benchlib.loadclient import write_wrk_script
from benchlib.processes import (
    Child,
    Procs,
    free_port,
    gateway_yaml,
    spawn_gateway,
    spawn_kind,
    wait_ready,
)
from benchlib.report import Row

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
    # The same config as `off` in a process of its own: the ratio of two
    # identical gateways is the noise floor the other ratios are read against.
    "control": "usage: {{enabled: false}}\n",
    "usage": "",
    "tracing": "tracing: {{enabled: true, endpoint: 'http://127.0.0.1:{sink}', "
    "service_name: bench}}\n",
    # Tracing without usage accounting: the "each against both off"
    # read literally (its spans carry no token counts).
    "tracing_alone": "usage: {{enabled: false}}\n"
    "tracing: {{enabled: true, endpoint: 'http://127.0.0.1:{sink}', service_name: bench}}\n",
}


def _spawn_gateway(procs: Procs, tmp: Path, name: str, extra: str, upstream: int) -> Child:
    config = tmp / f"gateway-usage-{name}.yaml"
    where = f"    base_url: http://{HOST}:{upstream}/v1\n"
    config.write_text(gateway_yaml(where, head=extra, tail="    models: [bench-model]\n"))
    core = procs.pin[0] if procs.pin else None
    return spawn_gateway(procs, f"gateway-{name}", config, core, env={"GATEWAY_USAGE": ""})


def phase_usage(procs: Procs, tmp: Path, s: Settings, wrk: str | None) -> dict:
    load_core = procs.pin[1] if procs.pin else None
    upstream = spawn_kind("direct", procs, tmp, None)
    wait_ready(upstream)
    sink_port = free_port()
    sink = procs.spawn(
        "otlp-sink", [sys.executable, "-c", _SINK, str(sink_port)], sink_port, load_core
    )
    wait_ready(sink)
    gateways = {
        name: _spawn_gateway(procs, tmp, name, extra.format(sink=sink_port), upstream.port)
        for name, extra in CONFIGS.items()
    }
    for g in gateways.values():
        wait_ready(g)
    script = write_wrk_script(tmp / "post-usage.lua")
    # The warm-up opens upstream connections and sends the exporter's first batch.
    # Short runs, three times as many rounds as the other comparisons: the
    # four runs of a round fall within a few seconds of each other, so the
    # machine's drift (up to 1.7x within minutes here) cancels in the ratios.
    rounds, seconds = max(3, 3 * s.workers_rounds), min(s.wrk_seconds, 2)
    out, runs = interleaved(gateways, rounds, seconds, wrk, procs, script)
    for key in ("control", "usage", "tracing", "tracing_alone"):
        # Per round, the ratio to `off`: drift between rounds cancels out.
        out[f"{key}_ratio"] = round_ratio(runs, "off", key)
    for child in (*gateways.values(), sink, upstream):
        procs.stop(child)
    return out


_RUNS = (
    ("off", "usage and tracing off"),
    ("usage", "usage on"),
    ("tracing", "usage + tracing on"),
    ("tracing_alone", "tracing on, usage off"),
)


def rows(r: dict) -> list[Row]:
    keys = [k for k, _ in _RUNS]
    out = [Row("usage phase: c=64 chat JSON, interleaved rounds", None, None, str(r["rounds"]))]
    for key, label in _RUNS:
        out.append(Row(f"requests/s, {label}", None, None, r[key]["rps_median"], fmt="{:.0f}"))
    out.append(
        Row(
            "control: both off again / both off, requests/s (the noise floor)",
            None,
            None,
            f"{r['control_ratio']:.3f}x",
            ratios=False,
        )
    )
    for key, label in _RUNS[1:]:
        ratio = r[f"{key}_ratio"]
        out.append(
            Row(
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
        Row(
            "gateway CPU per request (us), " + " / ".join(keys),
            None,
            None,
            " / ".join(f"{r[k]['cpu_us_per_request_median']:.0f}" for k in keys),
            ratios=False,
        ),
        Row(
            "errors, " + " / ".join(keys),
            None,
            None,
            " / ".join(str(r[k]["errors"]) for k in keys),
            ratios=False,
        ),
    ]
    return out
