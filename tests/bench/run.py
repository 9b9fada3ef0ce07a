"""The gateway's performance bench: one command, its own processes, one table.

    python3 tests/bench/run.py [--quick] [--json out.json] [--repeat N] [--profile DIR]
        [--workers-only | --replicas-only | --usage-only | --chunks-only]

It starts the bench upstream (tests/bench/upstream.py), the naive baseline
(tests/bench/minimal_forwarder.py) and the gateway (`python3 -m gateway
serve`), pins the proxies to one core and the upstream and the load to the
other (when `taskset` exists and there are two cores), measures, prints a
table with a PASS/FAIL column against the project's targets, and stops every
process it started, also on Ctrl-C. Everything talks only to 127.0.0.1.
tests/bench/README.md explains each figure; the code is in benchlib/ (one
module per phase; the main table's targets are data in benchlib/figures.py).
This file holds only the command line and the order of the phases.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import figures
from benchlib.common import CHUNKS, INTERVAL, Settings, say
from benchlib.machine import announce, choose_pinning, machine_info, raise_fd_limit
from benchlib.phase_chunks import phase_chunks
from benchlib.phase_chunks import rows as chunks_rows
from benchlib.phase_latency import phase_latency
from benchlib.phase_many import phase_many_streams
from benchlib.phase_replicas import phase_replicas
from benchlib.phase_replicas import rows as replicas_rows
from benchlib.phase_startup import start_and_measure
from benchlib.phase_streaming import phase_streaming
from benchlib.phase_throughput import phase_throughput
from benchlib.phase_usage import phase_usage
from benchlib.phase_usage import rows as usage_rows
from benchlib.phase_workers import phase_workers, workers_rows
from benchlib.processes import Procs, Target
from benchlib.profile import profile
from benchlib.report import Row, notes, render, report


@dataclass
class Bench:
    """What every phase may need: settings, processes, the load generator."""

    s: Settings
    procs: Procs
    tmp: Path
    wrk: str | None
    cpus: list[int]  # usable CPUs, before the bench pinned itself


@dataclass(frozen=True)
class OnlyPhase:
    """A phase that a flag runs alone: its title, the phase, its rows."""

    flag: str
    key: str
    title: Callable[[Settings], str]
    run: Callable[[Bench], dict]
    rows: Callable[[dict], list[Row]]


ONLY = (
    OnlyPhase(
        "workers_only",
        "workers",
        lambda s: (
            f"--workers 1 vs 2 at c=64, interleaved ({s.workers_rounds} x {s.wrk_seconds}s each)"
        ),
        lambda b: phase_workers(b.procs, b.tmp, b.s, b.wrk, b.cpus),
        workers_rows,
    ),
    OnlyPhase(
        "chunks_only",
        "chunks",
        lambda s: "CPU per relayed chunk: gateway, minimal forwarder, nginx",
        lambda b: phase_chunks(b.procs, b.tmp, b.s),
        chunks_rows,
    ),
    OnlyPhase(
        "replicas_only",
        "replicas",
        lambda s: "one provider over 3 replicas vs one base_url, c=64, interleaved",
        lambda b: phase_replicas(b.procs, b.tmp, b.s, b.wrk),
        replicas_rows,
    ),
    OnlyPhase(
        "usage_only",
        "usage",
        lambda s: "usage accounting and tracing on vs both off, c=64, interleaved",
        lambda b: phase_usage(b.procs, b.tmp, b.s, b.wrk),
        usage_rows,
    ),
)


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway performance bench (tests/bench).")
    parser.add_argument("--quick", action="store_true", help="short run for development")
    parser.add_argument("--json", metavar="PATH", help="write every raw figure as JSON")
    parser.add_argument("--repeat", type=int, metavar="N", help="rounds per phase (medians)")
    parser.add_argument(
        "--profile", metavar="DIR", help="also py-spy the gateway under load into DIR"
    )
    parser.add_argument(
        "--workers-only", action="store_true", help="only the --workers 1 vs 2 phase"
    )
    parser.add_argument(
        "--chunks-only", action="store_true", help="only the CPU-per-chunk phase (with nginx)"
    )
    parser.add_argument(
        "--replicas-only", action="store_true", help="only the 3 replicas vs one base_url phase"
    )
    parser.add_argument(
        "--usage-only", action="store_true", help="only the usage/tracing on vs off phase"
    )
    return parser.parse_args(list(argv) if argv is not None else None)


def start_targets(b: Bench, results: dict) -> list[Target]:
    """Phase 1: start the three targets, timing start-up; they serve phases 2 to 5."""
    s, procs, tmp = b.s, b.procs, b.tmp
    say(f"[1/6] start-up and idle RSS ({s.startup_runs} start(s) each)")
    startup = {}
    up_child, startup["direct"] = start_and_measure("direct", procs, tmp, None, s.startup_runs)
    fwd_child, startup["fwd"] = start_and_measure("fwd", procs, tmp, up_child.port, s.startup_runs)
    gw_child, startup["gw"] = start_and_measure("gw", procs, tmp, up_child.port, s.startup_runs)
    results["startup"] = startup
    return [
        Target("direct", "direct", up_child),
        Target("fwd", "minimal fwd", fwd_child),
        Target("gw", "gateway", gw_child),
    ]


def measure_all(b: Bench, targets: list[Target], results: dict) -> None:
    """Phases 2 to 6 and the extra phases, in this order."""
    s = b.s
    say(f"[2/6] non-stream latency, concurrency 1 ({s.rounds} x {s.latency_requests} each)")
    results["latency_c1"] = phase_latency(targets, s)
    gc.collect()

    say(f"[3/6] non-stream requests/s, concurrency 64 ({s.rounds} x {s.wrk_seconds}s each)")
    results["throughput_c64"] = phase_throughput(targets, s, b.wrk, b.procs, b.tmp)

    say(
        f"[4/6] streaming, {CHUNKS} chunks {INTERVAL * 1000:.0f} ms apart: concurrency 1 "
        f"({s.rounds} x {s.stream_c1}) and 10 ({s.rounds} x {s.stream_c10_batches} x 10)"
    )
    expected: list[str] = []
    results["streaming"] = phase_streaming(targets, s, expected)
    gc.collect()

    say(f"[5/6] {s.many_streams} concurrent streams, one target at a time")
    many = {}
    for t in targets:
        many[t.key] = phase_many_streams(t, s.many_streams, expected[0], t.child.pid)
        gc.collect()
    results["many_streams"] = many

    say(f"[6/6] --workers 1 vs 2 at c=64, interleaved ({s.workers_rounds} x {s.wrk_seconds}s each)")
    results["workers"] = phase_workers(b.procs, b.tmp, s, b.wrk, b.cpus)
    say("[+] one provider over 3 replicas vs one base_url, c=64, interleaved")
    results["replicas"] = phase_replicas(b.procs, b.tmp, s, b.wrk)
    say("[+] usage accounting and tracing on vs both off, c=64, interleaved")
    results["usage"] = phase_usage(b.procs, b.tmp, s, b.wrk)
    say("[+] CPU per relayed chunk: gateway, minimal forwarder, nginx; streams one core carries")
    results["chunks"] = phase_chunks(b.procs, b.tmp, s)
    say("done measuring")
    for t in targets:
        if t.child.popen.poll() is not None:
            raise RuntimeError(f"{t.child.name} died during the bench:\n{t.child.log_tail()}")


def all_rows(results: dict, s: Settings) -> list[Row]:
    rows = figures.rows(results, s.many_streams) + workers_rows(results["workers"])
    rows += replicas_rows(results["replicas"])
    rows += usage_rows(results["usage"])
    rows += chunks_rows(results["chunks"])
    return rows


def run(args: argparse.Namespace, b: Bench, info: dict, results: dict) -> None:
    for only in ONLY:
        if getattr(args, only.flag):
            say(only.title(b.s))
            results[only.key] = only.run(b)
            report(only.rows(results[only.key]), results, args.json)
            return
    targets = start_targets(b, results)
    measure_all(b, targets, results)
    rows = all_rows(results, b.s)
    say("")
    say(render(rows))
    say("")
    notes(results, b.s, info)
    if args.profile:
        results["profile"] = profile(targets[2], b.procs, b.tmp, b.wrk, Path(args.profile))
    report(rows, results, args.json, table_printed=True)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    s = Settings.make(args.quick, args.repeat)
    # SIGTERM becomes an exception so that `finally` stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fds = raise_fd_limit()
    cpus = sorted(os.sched_getaffinity(0))  # before the bench pins itself
    pin = choose_pinning()
    wrk = shutil.which("wrk")
    info = machine_info(pin, wrk)
    announce(s, info, pin, wrk, fds)
    if pin:
        os.sched_setaffinity(0, {pin[1]})  # the bench is the load: it stays off the proxies' core

    results: dict = {"settings": asdict(s), "machine": info}
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Procs(tmp, pin)
    gc.disable()  # collections in the loader would show up as latency
    try:
        run(args, Bench(s, procs, tmp, wrk, cpus), info, results)
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every process the bench started has been stopped", file=sys.stderr)
        sys.exit(130)
