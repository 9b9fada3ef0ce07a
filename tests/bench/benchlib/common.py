"""Constants, the requests the bench sends, settings and small statistics."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

# tests/bench: where run.py, upstream.py and minimal_forwarder.py are.
HERE = Path(__file__).resolve().parents[1]
REPO = HERE.parents[1]
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
CHUNKS = 64
INTERVAL = 0.02
# The upstream's schedule: the first event at once, then one every INTERVAL.
STREAM_SCHEDULE_MS = (CHUNKS - 1) * INTERVAL * 1000
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
MANY_STREAMS_MAX = 5000  # the most concurrent streams a phase opens
# Upstream connections allowed, gateway and forwarder alike: one per stream.
POOL = MANY_STREAMS_MAX + 100


def _body(stream: bool) -> bytes:
    return json.dumps(
        {
            "model": "bench/m",
            "messages": [{"role": "user", "content": "Say hello to the bench."}],
            "stream": stream,
        },
        separators=(",", ":"),
    ).encode()


BODY = _body(False)
STREAM_BODY = _body(True)
CLIENT_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}


def raw_request(port: int, body: bytes) -> bytes:
    head = [f"POST {PATH} HTTP/1.1", f"Host: {HOST}:{port}"]
    head += [f"{k}: {v}" for k, v in CLIENT_HEADERS.items()]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Settings:
    quick: bool
    rounds: int
    latency_requests: int  # per target per round, concurrency 1
    latency_block: int  # requests to one target before moving to the next
    wrk_seconds: int
    idle_requests: int  # per target per round, each after a 20 ms pause
    stream_c1: int  # streams per target per round at concurrency 1
    stream_c10_batches: int  # batches of 10 concurrent streams per target per round
    many_streams: int
    startup_runs: int
    workers_rounds: int  # interleaved 1-worker / 2-worker load runs

    @classmethod
    def make(cls, quick: bool, repeat: int | None) -> Settings:
        if quick:
            s = cls(
                quick=True,
                rounds=1,
                latency_requests=300,
                latency_block=100,
                wrk_seconds=2,
                idle_requests=20,
                stream_c1=2,
                stream_c10_batches=1,
                many_streams=200,
                startup_runs=1,
                workers_rounds=2,
            )
        else:
            s = cls(
                quick=False,
                rounds=3,
                latency_requests=2000,
                latency_block=100,
                wrk_seconds=5,
                idle_requests=40,
                stream_c1=5,
                stream_c10_batches=2,
                many_streams=MANY_STREAMS_MAX,
                startup_runs=3,
                workers_rounds=7,
            )
        if repeat is not None:
            s.rounds = max(1, repeat)
            s.workers_rounds = max(s.workers_rounds, s.rounds)
        return s


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else math.nan,
        "mean": statistics.fmean(ms) if ms else math.nan,
    }


def rotate(items: list, r: int) -> list:
    """Round r starts at a different target, so no target always goes first."""
    r %= len(items)
    return items[r:] + items[:r]


def say(msg: str) -> None:
    print(msg, flush=True)
