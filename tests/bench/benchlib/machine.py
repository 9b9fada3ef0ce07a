"""The machine: what it is, its cores, and CPU and memory read from /proc."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
import time
from pathlib import Path

from benchlib.common import Settings, say


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version_of(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return getattr(mod, "__version__", "?")


def machine_info(pin: tuple[int, int] | None, wrk: str | None) -> dict:
    wrk_version = None
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
        wrk_version = (out.stdout + out.stderr).split("[")[0].strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "aiohttp": version_of("aiohttp"),
        "uvloop": version_of("uvloop"),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "pinning": ({"proxies_core": pin[0], "upstream_and_load_core": pin[1]} if pin else "none"),
        "load_generator": wrk_version or "python asyncio loader (wrk not found)",
    }


def raise_fd_limit() -> int:
    """1,000 streams need ~2,000 sockets in the proxy; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def choose_pinning() -> tuple[int, int] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") and len(cpus) >= 2:
        return cpus[0], cpus[1]
    return None


_HZ = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the `--workers` parent and its workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids += process_tree(int(child))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by `pids` (those still alive), every thread.

    From each thread's /proc/PID/task/TID/schedstat (nanoseconds on a CPU),
    not /proc/PID/stat's utime + stime: those count 10 ms ticks, which on a
    round of ~0.4 s of CPU was a +-2.5% step in every per-chunk figure.
    Falls back to /proc/PID/stat where schedstat is missing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += _schedstat_seconds(pid)
    return total


_SCHEDSTAT = Path("/proc/self/schedstat").exists()


def _schedstat_seconds(pid: int) -> float:
    if not _SCHEDSTAT:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _HZ
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():  # OSError once the process is gone
        with contextlib.suppress(OSError):  # a thread that just ended
            ns += int((task / "schedstat").read_text().split()[0])
    return ns / 1e9


def machine_cpu(cpu: int | None = None) -> dict[str, float]:
    """CPU seconds from /proc/stat, of the machine or of one `cpu`: busy (all
    but idle and iowait), softirq."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == name:
            n = [int(x) for x in fields[1:9]]
            return {"busy": (sum(n) - n[3] - n[4]) / _HZ, "softirq": n[6] / _HZ}
    raise RuntimeError(f"no {name} line in /proc/stat")


def read_status_kb(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in kB ({} once it is gone)."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def announce(
    s: Settings, info: dict, pin: tuple[int, int] | None, wrk: str | None, fds: int
) -> None:
    """The lines before any figure: the run, the machine, pinning, the loader."""
    say(
        f"gateway bench ({'quick' if s.quick else 'full'}): {info['date']}\n"
        f"machine: {info['nproc']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}, "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, uvloop {info['uvloop']}, "
        f"load average {' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}"
    )
    if pin:
        say(
            f"pinning: gateway and minimal forwarder on core {pin[0]}; upstream and load on core {pin[1]}"
        )
    else:
        say(
            "pinning: none (needs taskset and >= 2 CPUs): figures mix all processes on shared cores"
        )
    if wrk:
        say(f"load generator: {info['load_generator']} (-t1 -c64) for requests/s")
    else:
        say(
            "load generator: WARNING: wrk not found (Debian: apt-get install -y wrk); "
            "falling back to the bench's Python asyncio loader for requests/s, which is "
            "slower: check the loader headroom row"
        )
    if fds < 2 * s.many_streams + 200:
        say(f"WARNING: open-file limit is {fds}; {s.many_streams} streams need more")
