"""The status page's arithmetic (gateway/ui/status_figures.js), run in Node:
rates from counter deltas, percentiles from bucket deltas, the 15-minute ring."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "gateway" / "ui" / "status_figures.js"

SCRIPT = """
import { Ring, quantile, rates } from %s;
const out = {};
const ring = new Ring(3);
for (const n of [1, 2, 3, 4, 5]) ring.push(n);
out.ring = ring.toArray();
out.p50 = quantile(0.5, [1, 2, 3], [0, 10, 0, 0]);
out.p95_inf = quantile(0.95, [1, 2, 3], [0, 0, 0, 5]);
out.empty = quantile(0.5, [1, 2], [0, 0, 0]);
const bounds = { ttfb: [0.1, 1], overhead: [0.001] };
const row = (requests, errors, ttfb, tokens, inflight) => ({
  name: "up", requests, errors, ttfb: { counts: ttfb, sum: 0 }, tokens, in_flight: inflight,
});
const before = { time: 100, bounds, overhead: { counts: [1, 0] },
  providers: [row(10, 1, [5, 5, 0], { prompt: 100, completion: 50 }, 0)] };
const now = { time: 102, bounds, overhead: { counts: [5, 0] },
  providers: [row(30, 6, [5, 25, 0], { prompt: 300, completion: 90 }, 2)] };
out.step = rates(now, before);
// A restarted gateway's counters start again from zero: not a negative rate.
const restarted = { ...now, time: 104, providers: [row(4, 0, [4, 0, 0], {}, 0)] };
out.reset = rates(restarted, now).providers.up;
console.log(JSON.stringify(out));
"""


def run_node() -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required (README: command 2)", pytrace=False)
    script = SCRIPT % json.dumps(MODULE.as_uri())
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)


def test_status_figures() -> None:
    out = run_node()
    assert out["ring"] == [3, 4, 5]  # the oldest two overwritten, order kept
    assert out["p50"] == pytest.approx(1.5)
    assert out["p95_inf"] == 3  # beyond the last bound: the last bound
    assert out["empty"] is None
    step = out["step"]
    up = step["providers"]["up"]
    assert step["time"] == 102
    assert up["rps"] == pytest.approx(10.0)  # 20 requests in 2 s
    assert up["errorRate"] == pytest.approx(0.25)  # 5 of 20
    assert up["tokIn"] == pytest.approx(100.0) and up["tokOut"] == pytest.approx(20.0)
    assert up["inflight"] == 2
    # The interval's 20 first bytes all fell in (0.1, 1]: its p50 is inside it.
    assert 0.1 < up["p50"] < 1 and up["p50"] < up["p95"] <= 1
    assert step["overheadP50"] == pytest.approx(0.0005)
    reset = out["reset"]
    assert reset["rps"] == pytest.approx(2.0) and reset["errorRate"] == 0
