"""--profile: py-spy on the gateway under load, and a summary of where time goes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchlib.common import STREAM_BODY, raw_request
from benchlib.loadclient import HttpConn, connect_many, load_c64, run_async
from benchlib.processes import Procs, Target


def profile(gw: Target, procs: Procs, tmp: Path, wrk: str | None, outdir: Path) -> dict:
    """py-spy record on the gateway under each load; a text summary of where time goes."""
    spy = shutil.which("py-spy")
    if not spy:
        print("profile: py-spy not found (pip install py-spy); skipped")
        return {}
    outdir.mkdir(parents=True, exist_ok=True)
    load_core = procs.pin[1] if procs.pin else None
    seconds = 8
    results = {}

    def record(name: str, load: Callable[[], object]) -> None:
        raw = outdir / f"gateway-{name}.txt"
        cmd = [*procs.prefix(load_core), spy, "record", "--pid", str(gw.child.pid)]
        cmd += ["--rate", "200", "--duration", str(seconds - 2), "--format", "raw"]
        cmd += ["--nolineno", "--gil", "--output", str(raw)]
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            load()
        finally:
            try:
                _, err = spy_proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                _, err = spy_proc.communicate()
        if not raw.exists():
            print(f"profile {name}: py-spy failed: {err.decode(errors='replace')[-500:]}")
            return
        text = summarize_profile(raw.read_text())
        (outdir / f"gateway-{name}.summary.txt").write_text(text)
        print(f"\n=== profile: gateway, {name} ({raw}) ===\n{text}")
        results[name] = str(raw)

    script = tmp / "post.lua"  # written by the throughput phase

    def nonstream() -> None:
        load_c64(wrk, procs.prefix(load_core), script, gw.port, seconds)

    def streams() -> None:
        async def main() -> None:
            req = raw_request(gw.port, STREAM_BODY)
            conns = await connect_many(gw.port, 200)
            stop = time.perf_counter() + seconds

            async def loop(c: HttpConn) -> None:
                while time.perf_counter() < stop:
                    await c.request(req)

            await asyncio.gather(*(loop(c) for c in conns))
            for c in conns:
                c.close()

        run_async(main())

    record("nonstream-c64", nonstream)
    record("stream-c200", streams)
    return results


def summarize_profile(raw: str, top: int = 25) -> str:
    """Self and inclusive shares per function, and self share per file."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    files: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        m = re.search(r"\(([^)]*)\)\s*$", frames[-1])
        files[m.group(1) if m else frames[-1]] += n
    if not total:
        return "no samples (was the process busy?)"
    lines = [f"{total} samples with the GIL held", "", "self time by function:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(top)]
    lines += ["", "self time by file:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in files.most_common(15)]
    lines += ["", "inclusive time by function:"]
    # Frames on every stack (the interpreter's entry, asyncio.run) say nothing.
    shared = [f for f, c in incl.most_common(top + 20) if c < total]
    lines += [f"  {100 * incl[f] / total:5.1f}%  {f}" for f in shared[: top + 10]]
    return "\n".join(lines)
