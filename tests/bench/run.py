"""The gateway's performance bench: one command, its own processes, one table.

    python3 tests/bench/run.py [--quick] [--json out.json] [--repeat N] [--profile DIR]

It starts the bench upstream (tests/bench/upstream.py), the naive baseline
(tests/bench/minimal_forwarder.py) and the gateway (`python3 -m gateway
serve`), pins the proxies to one core and the upstream and the load to the
other (when `taskset` exists and there are two cores), measures, prints a
table with a PASS/FAIL column against the project's targets, and stops every
process it started, also on Ctrl-C. Everything talks only to 127.0.0.1.
tests/bench/README.md explains each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Phase modules beside this file `import run`: run as a script, this module is
# __main__, and they must get this one rather than a second copy.
sys.modules.setdefault("run", sys.modules[__name__])
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


# ---------------------------------------------------------------- settings


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


# ---------------------------------------------------------------- stats


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


# ---------------------------------------------------------------- machine


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


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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


@dataclass
class Child:
    name: str
    port: int
    popen: subprocess.Popen
    log: Path
    spawned_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


class Procs:
    """Every process the bench starts, so that all of them are stopped at the end."""

    def __init__(self, tmp: Path, pin: tuple[int, int] | None):
        self.tmp = tmp
        self.pin = pin
        self.children: list[Child] = []
        self._n = 0

    def prefix(self, core: int | None) -> list[str]:
        if self.pin is None or core is None:
            return []
        return ["taskset", "-c", str(core)]

    def spawn(
        self, name: str, argv: list[str], port: int, core: int | None, env: dict | None = None
    ) -> Child:
        self._n += 1
        log = self.tmp / f"{name}-{self._n}.log"
        with log.open("wb") as fh:
            started = time.perf_counter()
            popen = subprocess.Popen(
                self.prefix(core) + argv,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches only the bench, whose
                # `finally` then stops the children.
                start_new_session=True,
            )
        child = Child(name, port, popen, log, started)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        p = child.popen
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(reversed(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child)


def wait_ready(child: Child, timeout: float = 20.0) -> float:
    """Poll GET /readyz every 2 ms; return the moment of the first 200."""
    request = f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.perf_counter() + timeout
    last = "no answer yet"
    while time.perf_counter() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.popen.returncode} before it was ready:\n"
                + child.log_tail()
            )
        try:
            with socket.create_connection((HOST, child.port), timeout=1) as s:
                s.sendall(request)
                head = s.recv(64)
            if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                return time.perf_counter()
            last = f"answered {head.splitlines()[0] if head else b'nothing'!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.002)
    raise RuntimeError(
        f"{child.name} not ready on port {child.port} within {timeout}s ({last}):\n"
        + child.log_tail()
    )


def one_request(port: int, body: bytes = BODY) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", PATH, body=body, headers=CLIENT_HEADERS)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- raw HTTP client


@dataclass
class Reply:
    status: int
    ttfb: float  # request written -> first body byte, seconds
    total: float  # request written -> last body byte, seconds
    body: bytes


class HttpConn(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection with almost no overhead.

    aiohttp's client costs tens of microseconds per request, which would show
    up in the figures and make the loader a bottleneck; this parses just
    enough HTTP (status, Content-Length or chunked) and timestamps the first
    and last body bytes as they arrive.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self._reset(0.0)

    def _reset(self, sent: float) -> None:
        self.state = "head"
        self.status = 0
        self.remaining = 0
        self.parts: list[bytes] = []
        self.sent = sent
        self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed mid-response: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.transport.close()  # bytes nobody asked for: the stream is broken
            return
        self.buf += data
        try:
            self._parse(now)
        except Exception as exc:
            waiter.set_exception(exc)
            self.transport.close()

    def _body(self, n: int, now: float) -> None:
        if not self.first:
            self.first = now
        self.parts.append(bytes(self.buf[:n]))
        del self.buf[:n]
        self.remaining -= n

    def _parse(self, now: float) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(" ", 2)[1])
                chunked, length = False, None
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                if chunked:
                    self.state = "size"
                elif length is not None:
                    self.remaining = length
                    self.state = "fixed"
                else:
                    raise ValueError("response has neither Content-Length nor chunked")
            elif state == "fixed":
                if self.remaining and buf:
                    self._body(min(len(buf), self.remaining), now)
                if self.remaining:
                    return
                self._finish(now)
                return
            elif state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self.remaining = size
                self.state = "data" if size else "trailer"
            elif state == "data":
                if not buf:
                    return
                self._body(min(len(buf), self.remaining), now)
                if self.remaining:
                    return
                self.state = "crlf"
            elif state == "crlf":
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self.state = "size"
            elif state == "trailer":  # no trailers expected: just the final CRLF
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("trailers are not supported by the bench client")
                del buf[:2]
                self._finish(now)
                return

    def _finish(self, now: float) -> None:
        first = self.first or now
        reply = Reply(self.status, first - self.sent, now - self.sent, b"".join(self.parts))
        self.state = "idle"
        self.waiter.set_result(reply)

    async def request(self, raw: bytes) -> Reply:
        if self.closed:
            raise ConnectionError("connection already closed")
        self._reset(time.perf_counter())
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> HttpConn:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(HttpConn, HOST, port), 10)
    return proto


async def connect_many(port: int, n: int, batch: int = 100) -> list[HttpConn]:
    """Open n connections in batches, so the listen backlog is not what is measured."""
    conns: list[HttpConn] = []
    for start in range(0, n, batch):
        conns += await asyncio.gather(*(connect(port) for _ in range(min(batch, n - start))))
    return conns


def run_async(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ---------------------------------------------------------------- phases


@dataclass
class Target:
    key: str  # "direct" | "fwd" | "gw"
    label: str
    child: Child

    @property
    def port(self) -> int:
        return self.child.port


class Client:
    """One keep-alive connection that reconnects after a failure and counts it.

    A proxy that drops a request must show up as an error in the figures,
    not end the bench.
    """

    def __init__(self, port: int, timeout: float = 30.0):
        self.port = port
        self.timeout = timeout
        self.conn: HttpConn | None = None
        self.errors: Counter = Counter()

    async def request(self, raw: bytes) -> Reply | None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await connect(self.port)
            return await asyncio.wait_for(self.conn.request(raw), self.timeout)
        except (OSError, ValueError) as exc:  # timeouts and resets are OSErrors
            self.errors[type(exc).__name__] += 1
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _errors(clients: Iterable[Client], extra: int = 0) -> dict:
    total: Counter = Counter()
    for c in clients:
        total.update(c.errors)
    if extra:
        total["non-200 status"] += extra
    return {"errors": sum(total.values()), "error_kinds": dict(total)}


def phase_latency(targets: list[Target], s: Settings) -> dict:
    """Concurrency 1, keep-alive, interleaved blocks: latency per request.

    Also a few requests after a 20 ms pause each, the way stream requests
    find a proxy that has been idle: on small VMs that wake-up costs more
    than the proxy's code, and this figure shows how much.
    """

    async def main() -> dict:
        clients = {t.key: Client(t.port) for t in targets}
        reqs = {t.key: raw_request(t.port, BODY) for t in targets}
        samples: dict[str, list[float]] = {t.key: [] for t in targets}
        idle: dict[str, list[float]] = {t.key: [] for t in targets}
        bad: Counter = Counter()
        for t in targets:  # warm-up: pools filled, code paths hot
            for _ in range(200):
                await clients[t.key].request(reqs[t.key])
        blocks = max(1, s.latency_requests // s.latency_block)
        for r in range(s.rounds):
            for b in range(blocks):
                for t in rotate(targets, r + b):
                    client, req, out = clients[t.key], reqs[t.key], samples[t.key]
                    for _ in range(s.latency_block):
                        reply = await client.request(req)
                        if reply is None:
                            continue
                        bad[t.key] += reply.status != 200
                        out.append(reply.total)
            for _ in range(s.idle_requests):
                for t in rotate(targets, r):
                    await asyncio.sleep(0.02)
                    reply = await clients[t.key].request(reqs[t.key])
                    if reply is not None:
                        bad[t.key] += reply.status != 200
                        idle[t.key].append(reply.total)
        for c in clients.values():
            c.close()
        return {
            t.key: {
                **summary_ms(samples[t.key]),
                "after_idle": summary_ms(idle[t.key]),
                **_errors([clients[t.key]], bad[t.key]),
            }
            for t in targets
        }

    return run_async(main())


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
{headers}
"""

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else math.nan


def run_wrk(wrk: str, prefix: list[str], script: Path, port: int, seconds: int, conns: int) -> dict:
    cmd = [*prefix, wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    cmd += ["-s", str(script), f"http://{HOST}:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    if out.returncode != 0 or "Requests/sec" not in text:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or text}")
    result: dict = {"rps": float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))}
    m = re.search(r"(\d+) requests in", text)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result["socket_errors"] = sum(map(int, m.groups())) if m else 0
    for q in ("50", "99"):
        m = re.search(rf"^\s*{q}(?:\.000)?%\s+(\S+)", text, re.M)
        result[f"p{q}_ms"] = _ms(m.group(1)) if m else math.nan
    return result


def python_load(port: int, seconds: float, conns: int) -> dict:
    """The fallback loader when wrk is missing: keep-alive raw-socket clients."""

    async def main() -> dict:
        req = raw_request(port, BODY)
        clients = await connect_many(port, conns)
        done, bad, lat = 0, 0, []
        stop = time.perf_counter() + seconds

        async def worker(c: HttpConn) -> None:
            nonlocal done, bad
            while time.perf_counter() < stop:
                reply = await c.request(req)
                done += 1
                bad += reply.status != 200
                lat.append(reply.total)

        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - started
        for c in clients:
            c.close()
        s = summary_ms(lat)
        return {
            "rps": done / elapsed,
            "requests": done,
            "non_2xx": bad,
            "socket_errors": 0,
            "p50_ms": s["p50"],
            "p99_ms": s["p99"],
        }

    return run_async(main())


_HZ = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the `--workers` parent and its workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids += process_tree(int(child))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by `pids` (those still alive)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _HZ


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


def phase_throughput(
    targets: list[Target], s: Settings, wrk: str | None, procs: Procs, tmp: Path
) -> dict:
    """Concurrency 64, one wrk thread: requests/s, several rounds, medians."""
    script = tmp / "post.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in CLIENT_HEADERS.items())
    script.write_text(WRK_SCRIPT.format(body=BODY.decode(), headers=headers))
    load_core = procs.pin[1] if procs.pin else None

    def load(port: int, seconds: int) -> dict:
        before = machine_cpu(load_core) if load_core is not None else None
        if wrk:
            result = run_wrk(wrk, procs.prefix(load_core), script, port, seconds, 64)
        else:
            result = python_load(port, seconds, 64)
        if before is not None:
            # How busy the load core was (wrk and the upstream): below 100%
            # the load side was not what limited the rate.
            busy = machine_cpu(load_core)["busy"] - before["busy"]
            result["load_core_busy"] = busy / seconds
        return result

    def loader_alone(direct: Target, seconds: int) -> dict:
        """The loader's own rate: the upstream moves to the proxy core (idle
        meanwhile), so the loader has the load core to itself."""
        os.sched_setaffinity(direct.child.pid, {procs.pin[0]})
        try:
            return load(direct.port, seconds)
        finally:
            os.sched_setaffinity(direct.child.pid, {procs.pin[1]})

    runs: dict[str, list[dict]] = {t.key: [] for t in targets}
    loader_runs: list[dict] = []
    direct = next((t for t in targets if t.key == "direct"), None)
    measure_loader = bool(procs.pin and direct)
    for t in targets:
        load(t.port, 1)  # warm-up
    for r in range(s.rounds):
        for t in rotate(targets, r):
            runs[t.key].append(load(t.port, s.wrk_seconds))
        if measure_loader:
            loader_runs.append(loader_alone(direct, s.wrk_seconds))
    out: dict = {}
    if loader_runs:
        out["loader_alone"] = {
            "rps_median": statistics.median(x["rps"] for x in loader_runs),
            "runs": loader_runs,
        }
    for t in targets:
        rs = runs[t.key]
        out[t.key] = {
            "rps_median": statistics.median(x["rps"] for x in rs),
            "p50_ms_median": statistics.median(x["p50_ms"] for x in rs),
            "p99_ms_median": statistics.median(x["p99_ms"] for x in rs),
            "errors": sum(x["non_2xx"] + x["socket_errors"] for x in rs),
            "runs": rs,
        }
        if all("load_core_busy" in x for x in rs):
            out[t.key]["load_core_busy_median"] = statistics.median(x["load_core_busy"] for x in rs)
    return out


def workers_placement(cpus: list[int]) -> tuple[list[int], list[int]]:
    """(CPUs for the gateway, CPUs for the upstream and load) in the workers phase.

    With three CPUs or more the two workers get two of them and the load the
    rest, so the scaling is the gateway's own. With two, everything shares
    both: two workers need both cores, so the load cannot be kept off them.
    """
    if len(cpus) >= 3:
        return cpus[:2], cpus[2:]
    return cpus, cpus


def phase_workers(procs: Procs, tmp: Path, s: Settings, wrk: str | None, cpus: list[int]) -> dict:
    """`serve --workers 1` vs `--workers 2` at c=64, runs interleaved.

    Placement: see `workers_placement` (on this project's 2-core machines the
    gateway shares both cores with its upstream and the load generator).
    Both gateways run side by side and their load runs alternate, so drift on
    a shared machine hits both alike; the scaling is the median of the
    per-round ratios. Each run also records where the machine's CPU went
    (gateway processes, upstream, wrk): when the load shares the gateway's
    cores it takes a share that one worker leaves free, which bounds the
    ratio below 2x whatever the gateway does.
    """
    gw_cpus, load_cpus = workers_placement(cpus)
    taskset = shutil.which("taskset")

    def on(cpu_list: list[int]) -> list[str]:
        return ["taskset", "-c", ",".join(map(str, cpu_list))] if taskset else []

    load_on, gw_on = on(load_cpus), on(gw_cpus)
    # The bench itself is the load when wrk is missing; it sits on the load core(s).
    bench_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(load_cpus))
    up_port = free_port()
    upstream = procs.spawn(
        "upstream-workers",
        [*load_on, sys.executable, str(HERE / "upstream.py"), "--port", str(up_port),
         "--chunks", str(CHUNKS), "--interval", str(INTERVAL)],
        up_port,
        None,
    )  # fmt: skip
    wait_ready(upstream)
    script = tmp / "post-workers.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in CLIENT_HEADERS.items())
    script.write_text(WRK_SCRIPT.format(body=BODY.decode(), headers=headers))
    config = tmp / "gateway-workers.yaml"
    config.write_text(
        # Client connections past the default 4,096 for the many-streams phase
        # (the gateway lowers it to what `ulimit -n` allows, and says so).
        f"limits: {{max_connections: {2 * MANY_STREAMS_MAX}}}\n"
        "providers:\n"
        "  - name: bench\n"
        "    provider_type: custom\n"
        f"    base_url: http://{HOST}:{up_port}/v1\n"
        f"    api_key: env:{UPSTREAM_KEY_ENV}\n"
        f"    max_connections: {POOL}\n"
    )
    gateways: dict[int, Child] = {}
    for n in (1, 2):
        port = free_port()
        argv = [*gw_on, sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        argv += ["--listen", f"{HOST}:{port}", "--shutdown-grace", "1", "--workers", str(n)]
        gateways[n] = procs.spawn(
            f"gateway-workers{n}", argv, port, None, env={UPSTREAM_KEY_ENV: "sk-bench-upstream"}
        )
    try:
        for child in gateways.values():
            wait_ready(child)

        def load(n: int, seconds: int) -> dict:
            port = gateways[n].port
            if not wrk:
                return python_load(port, seconds, 64)
            gw_pids = process_tree(gateways[n].pid)
            before = (cpu_seconds(gw_pids), cpu_seconds([upstream.pid]), machine_cpu())
            wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = run_wrk(wrk, load_on, script, port, seconds, 64)
            wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = (cpu_seconds(gw_pids), cpu_seconds([upstream.pid]), machine_cpu())
            result["cpu_s"] = {
                "gateway": after[0] - before[0],
                "upstream": after[1] - before[1],
                "wrk": (wrk_after.ru_utime + wrk_after.ru_stime)
                - (wrk_before.ru_utime + wrk_before.ru_stime),
                "softirq": after[2]["softirq"] - before[2]["softirq"],
                "machine_busy": after[2]["busy"] - before[2]["busy"],
                "machine_total": seconds * len(cpus),
            }
            result["workers"] = len(gw_pids) - (n > 1)
            return result

        for n in (1, 2):
            load(n, 1)  # warm-up; also lets the second worker finish starting
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(s.workers_rounds):
            for n in rotate([1, 2], r):
                runs[n].append(load(n, s.wrk_seconds))
    finally:
        for child in gateways.values():
            procs.stop(child)
        procs.stop(upstream)
        os.sched_setaffinity(0, bench_affinity)
    out: dict = {}
    for n in (1, 2):
        rs = runs[n]
        out[n] = {
            "rps_median": statistics.median(x["rps"] for x in rs),
            "errors": sum(x["non_2xx"] + x["socket_errors"] for x in rs),
            "runs": rs,
        }
        if all("cpu_s" in x for x in rs):
            out[n]["cpu"] = {
                key: statistics.median(x["cpu_s"][key] for x in rs) for key in rs[0]["cpu_s"]
            }
            # CPU time per request, so the two runs compare however fast each went.
            out[n]["gateway_cpu_us_per_request"] = statistics.median(
                x["cpu_s"]["gateway"] / x["requests"] * 1e6 for x in rs if x["requests"]
            )
    out["placement"] = (
        f"gateway on CPUs {','.join(map(str, gw_cpus))}, load on {','.join(map(str, load_cpus))}"
        if gw_cpus != load_cpus
        else f"all on CPUs {','.join(map(str, cpus))} (shared)"
    )
    ratios = [b["rps"] / a["rps"] for a, b in zip(runs[1], runs[2], strict=True)]
    out["round_ratios"] = ratios
    out["scaling"] = statistics.median(ratios)
    return out


def workers_rows(w: dict) -> list[Row]:
    rows = [
        Row("--workers phase: placement", None, None, w["placement"], ratios=False),
        Row("requests/s c=64, 1 worker", None, None, w[1]["rps_median"], fmt="{:.0f}"),
        Row("requests/s c=64, --workers 2", None, None, w[2]["rps_median"], fmt="{:.0f}"),
        Row(
            "--workers 2 / 1 worker (median of rounds)",
            None,
            None,
            f"{w['scaling']:.2f}x",
            ">= 1.7x",
            w["scaling"] >= 1.7,
            ratios=False,
        ),
    ]
    if "cpu" in w[2]:
        rows.append(
            Row(
                "gateway CPU per request (us), 1 worker / 2 workers",
                None,
                None,
                f"{w[1]['gateway_cpu_us_per_request']:.0f} / "
                f"{w[2]['gateway_cpu_us_per_request']:.0f}",
                ratios=False,
            )
        )
        # What the two workers would give if the load and the upstream ran on
        # other cores: two cores at the per-request cost measured with two
        # workers (contention included, so this errs low), over one worker's.
        estimate = 2 * w[1]["gateway_cpu_us_per_request"] / w[2]["gateway_cpu_us_per_request"]
        rows.append(
            Row(
                "estimated --workers 2 scaling with load on other cores",
                None,
                None,
                f"{estimate:.2f}x",
                ratios=False,
            )
        )
        for n in (1, 2):
            c = w[n]["cpu"]
            total = c["machine_total"]
            rows.append(
                Row(
                    f"machine CPU in {n}-worker runs: gw/upstream/wrk/idle",
                    None,
                    None,
                    " / ".join(
                        f"{100 * v / total:.0f}%"
                        for v in (
                            c["gateway"],
                            c["upstream"],
                            c["wrk"],
                            max(0.0, total - c["machine_busy"]),
                        )
                    ),
                    ratios=False,
                )
            )
    errors = w[1]["errors"] + w[2]["errors"]
    rows.append(
        Row(
            "--workers runs: errors",
            None,
            None,
            errors,
            "0",
            errors == 0,
            fmt="{:d}",
            ratios=False,
        )
    )
    return rows


def phase_streaming(targets: list[Target], s: Settings, expected: list[str]) -> dict:
    """Streams at concurrency 1 and 10: TTFB, total time, bytes vs direct."""

    async def main() -> dict:
        reqs = {t.key: raw_request(t.port, STREAM_BODY) for t in targets}
        c1 = {t.key: Client(t.port) for t in targets}
        c10 = {t.key: [Client(t.port) for _ in range(10)] for t in targets}
        res: dict = {
            t.key: {"c1": [], "c10": [], "hashes": Counter(), "non_200": 0} for t in targets
        }

        def record(key: str, level: str, reply: Reply | None) -> None:
            if reply is None:
                return  # counted by its Client
            r = res[key]
            r[level].append(reply)
            r["hashes"][hashlib.sha256(reply.body).hexdigest()] += 1
            r["non_200"] += reply.status != 200

        first = await c1["direct"].request(reqs["direct"])
        if first is None or first.status != 200:
            raise RuntimeError(f"the upstream failed a stream: {c1['direct'].errors or first}")
        expected.append(hashlib.sha256(first.body).hexdigest())
        for t in targets[1:]:  # warm-up
            await c1[t.key].request(reqs[t.key])
        for r in range(s.rounds):
            for t in rotate(targets, r):
                for _ in range(s.stream_c1):
                    record(t.key, "c1", await c1[t.key].request(reqs[t.key]))
            for t in rotate(targets, r):
                for _ in range(s.stream_c10_batches):
                    replies = await asyncio.gather(*(c.request(reqs[t.key]) for c in c10[t.key]))
                    for reply in replies:
                        record(t.key, "c10", reply)
        out = {}
        for t in targets:
            c1[t.key].close()
            for c in c10[t.key]:
                c.close()
            r = res[t.key]
            errors = _errors([c1[t.key], *c10[t.key]], r["non_200"])
            out[t.key] = {
                "ttfb_c1": summary_ms([x.ttfb for x in r["c1"]]),
                "total_c1": summary_ms([x.total for x in r["c1"]]),
                "ttfb_c10": summary_ms([x.ttfb for x in r["c10"]]),
                "total_c10": summary_ms([x.total for x in r["c10"]]),
                **errors,
                "identical": set(r["hashes"]) == {expected[0]} and not errors["errors"],
                "sha256": dict(r["hashes"]),
            }
        out["direct"]["events"] = first.body.count(b"data: ")
        out["direct"]["bytes"] = len(first.body)
        return out

    return run_async(main())


def phase_many_streams(t: Target, n: int, expected_hash: str, watch_pid: int) -> dict:
    """n streams at once on pre-opened connections, twice: errors, TTFB, peak RSS.

    The first burst finds the proxy's upstream pool nearly empty (n new
    upstream connections); the second reuses them, which is the steady state.
    """

    async def burst(conns: list[HttpConn], req: bytes) -> tuple[dict, list[HttpConn]]:
        started = time.perf_counter()
        tasks = [asyncio.create_task(c.request(req)) for c in conns]
        _done, pending = await asyncio.wait(tasks, timeout=120)
        wall = time.perf_counter() - started
        for p in pending:
            p.cancel()
        errors: Counter = Counter()
        errors["timeout"] = len(pending)
        ok: list[Reply] = []
        keep: list[HttpConn] = []
        for c, task in zip(conns, tasks, strict=True):
            if task in pending:
                c.close()
                continue
            if task.exception() is not None:
                errors[type(task.exception()).__name__] += 1
                c.close()
                continue
            keep.append(c)
            reply = task.result()
            if reply.status != 200:
                errors[f"status {reply.status}"] += 1
            elif hashlib.sha256(reply.body).hexdigest() != expected_hash:
                errors["bytes differ"] += 1
            else:
                ok.append(reply)
        return {
            "errors": sum(errors.values()),
            "error_kinds": {k: v for k, v in errors.items() if v},
            "ttfb": summary_ms([x.ttfb for x in ok]),
            "total": summary_ms([x.total for x in ok]),
            "wall_s": wall,
        }, keep

    async def main() -> dict:
        req = raw_request(t.port, STREAM_BODY)
        conns = await connect_many(t.port, n)
        peak = 0
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, read_status_kb(watch_pid).get("VmRSS", 0))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        sampler = asyncio.create_task(sample())
        try:
            first, conns = await burst(conns, req)
            if len(conns) < n:  # replace the broken ones so the second burst is n again
                conns += await connect_many(t.port, n - len(conns))
            second, conns = await burst(conns, req)
        finally:
            stop.set()
            await sampler
            for c in conns:
                c.close()
        status = read_status_kb(watch_pid)
        return {
            "streams": n,
            "errors": first["errors"] + second["errors"],
            "first_burst": first,
            "second_burst": second,
            "rss_peak_sampled_mb": peak / 1024,
            "vm_hwm_mb": status.get("VmHWM", 0) / 1024,
        }

    return run_async(main())


# ---------------------------------------------------------------- spawning the three


def spawn_kind(kind: str, procs: Procs, tmp: Path, upstream_port: int | None) -> Child:
    port = free_port()
    core_proxy, core_load = procs.pin if procs.pin else (None, None)
    py = sys.executable
    if kind == "direct":
        argv = [py, str(HERE / "upstream.py"), "--port", str(port)]
        argv += ["--chunks", str(CHUNKS), "--interval", str(INTERVAL)]
        return procs.spawn("upstream", argv, port, core_load)
    if kind == "fwd":
        argv = [py, str(HERE / "minimal_forwarder.py"), "--port", str(port)]
        argv += ["--upstream", f"http://{HOST}:{upstream_port}", "--pool", str(POOL)]
        return procs.spawn("minimal-forwarder", argv, port, core_proxy)
    config = tmp / "gateway.yaml"
    config.write_text(
        # Client connections past the default 4,096 for the many-streams phase
        # (the gateway lowers it to what `ulimit -n` allows, and says so).
        f"limits: {{max_connections: {2 * MANY_STREAMS_MAX}}}\n"
        "providers:\n"
        "  - name: bench\n"
        "    provider_type: custom\n"
        f"    base_url: http://{HOST}:{upstream_port}/v1\n"
        f"    api_key: env:{UPSTREAM_KEY_ENV}\n"
        f"    max_connections: {POOL}\n"
    )
    argv = [py, "-m", "gateway", "serve", "--config", str(config)]
    argv += ["--listen", f"{HOST}:{port}", "--shutdown-grace", "1"]
    return procs.spawn(
        "gateway", argv, port, core_proxy, env={UPSTREAM_KEY_ENV: "sk-bench-upstream"}
    )


def start_and_measure(
    kind: str, procs: Procs, tmp: Path, upstream_port: int | None, runs: int
) -> tuple[Child, dict]:
    """Start `runs` times: spawn -> first 200 on /readyz, then RSS after one request.

    The last process started is kept for the other phases.
    """
    ready_ms, rss_mb = [], []
    child = None
    for i in range(runs):
        child = spawn_kind(kind, procs, tmp, upstream_port)
        ready = wait_ready(child)
        ready_ms.append((ready - child.spawned_at) * 1000)
        status, body = one_request(child.port)
        if status != 200:
            raise RuntimeError(f"{child.name}: first request answered {status}: {body[:300]!r}")
        rss_mb.append(read_status_kb(child.pid).get("VmRSS", 0) / 1024)
        if i < runs - 1:
            procs.stop(child)
    return child, {
        "ready_ms_median": statistics.median(ready_ms),
        "ready_ms": ready_ms,
        "idle_rss_mb_median": statistics.median(rss_mb),
        "idle_rss_mb": rss_mb,
    }


# ---------------------------------------------------------------- profile


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

    script = tmp / "post.lua"

    def nonstream() -> None:
        if wrk:
            run_wrk(wrk, procs.prefix(load_core), script, gw.port, seconds, 64)
        else:
            python_load(gw.port, seconds, 64)

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


# ---------------------------------------------------------------- table


@dataclass
class Row:
    figure: str
    direct: float | str | None
    fwd: float | str | None
    gw: float | str | None
    target: str = ""
    passed: bool | None = None
    fmt: str = "{:.3f}"
    ratios: bool = True
    note: str = ""

    def cell(self, v: float | str | None) -> str:
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        if isinstance(v, float) and math.isnan(v):
            return "n/a"
        return self.fmt.format(v)

    def ratio(self, a: object, b: object) -> str:
        if not self.ratios or not isinstance(a, int | float) or not isinstance(b, int | float):
            return "-"
        if b == 0 or math.isnan(a) or math.isnan(b):
            return "-"
        return f"{a / b:.2f}x"


def build_rows(res: dict, s: Settings) -> list[Row]:
    lat, thr, st, many, start = (
        res["latency_c1"],
        res["throughput_c64"],
        res["streaming"],
        res["many_streams"],
        res["startup"],
    )
    rows: list[Row] = []
    k3 = ("direct", "fwd", "gw")

    def three(d: dict, path: Callable[[dict], float]) -> list[float]:
        return [path(d[k]) for k in k3]

    # non-streaming, concurrency 1
    rows.append(Row("non-stream c=1 latency p50 (ms)", *three(lat, lambda x: x["p50"])))
    rows.append(Row("non-stream c=1 latency p99 (ms)", *three(lat, lambda x: x["p99"])))
    for q, limit in (("p50", 0.3), ("p99", 1.0)):
        added = {k: lat[k][q] - lat["direct"][q] for k in ("fwd", "gw")}
        rows.append(
            Row(
                f"added latency c=1 {q} (ms)",
                None,
                added["fwd"],
                added["gw"],
                f"<= {limit} ms",
                added["gw"] <= limit,
            )
        )
    woke = three(lat, lambda x: x["after_idle"]["p50"])
    rows.append(Row("c=1 latency p50 after 20 ms idle (ms)", *woke))
    rows.append(
        Row("added latency after 20 ms idle p50 (ms)", None, woke[1] - woke[0], woke[2] - woke[0])
    )
    errors = three(lat, lambda x: x["errors"])
    rows.append(Row("c=1 errors", *errors, "0", errors[2] == 0, fmt="{:d}", ratios=False))
    # non-streaming, concurrency 64
    rps = three(thr, lambda x: x["rps_median"])
    rows.append(
        Row(
            "requests/s c=64 (median)",
            *rps,
            ">= 1.0x fwd (aim 1.5x)",
            rps[2] >= rps[1],
            fmt="{:.0f}",
        )
    )
    rows.append(
        Row("c=64 latency p99 (ms, wrk)", *three(thr, lambda x: x["p99_ms_median"]), fmt="{:.2f}")
    )
    rows.append(
        Row(
            "c=64 errors (non-2xx + socket)",
            *three(thr, lambda x: x["errors"]),
            "0",
            thr["gw"]["errors"] == 0,
            fmt="{:d}",
            ratios=False,
        )
    )
    headroom = rps[0] / rps[2] if rps[2] else math.nan
    rows.append(
        Row(
            "direct / gw rps (loader and upstream share a core)",
            None,
            None,
            headroom,
            fmt="{:.1f}x",
        )
    )
    if "loader_alone" in thr:
        alone = thr["loader_alone"]["rps_median"]
        rows.append(
            Row("loader's own rate (upstream moved off its core)", alone, None, None, fmt="{:.0f}")
        )
        headroom = alone / rps[2] if rps[2] else math.nan
        rows.append(
            Row(
                "loader headroom: loader's own rate / gw rps",
                None,
                None,
                headroom,
                ">= 5x (loader not the limit)",
                headroom >= 5,
                fmt="{:.1f}x",
                ratios=False,
            )
        )
    if all("load_core_busy_median" in thr[k] for k in k3):
        rows.append(
            Row(
                "load core busy during c=64 runs (loader + upstream)",
                *(f"{100 * thr[k]['load_core_busy_median']:.0f}%" for k in k3),
                ratios=False,
            )
        )
    # streaming
    for level in ("c1", "c10"):
        c = level[1:]
        ttfb = three(st, lambda x, lv=level: x[f"ttfb_{lv}"]["p50"])
        rows.append(Row(f"stream c={c} TTFB p50 (ms)", *ttfb))
        rows.append(
            Row(
                f"stream c={c} TTFB p99 (ms)",
                *three(st, lambda x, lv=level: x[f"ttfb_{lv}"]["p99"]),
            )
        )
        added = {
            k: st[k][f"ttfb_{level}"]["p50"] - st["direct"][f"ttfb_{level}"]["p50"] for k in k3
        }
        # The target is for one stream; 10 requests arriving together queue
        # in any single-threaded proxy, so c=10 is shown, not judged.
        rows.append(
            Row(
                f"added stream TTFB c={c} p50 (ms)",
                None,
                added["fwd"],
                added["gw"],
                "<= 1 ms" if level == "c1" else "",
                added["gw"] <= 1.0 if level == "c1" else None,
            )
        )
        total = three(st, lambda x, lv=level: x[f"total_{lv}"]["p50"])
        rows.append(
            Row(
                f"stream c={c} total time p50 (ms)",
                *total,
                "gw/direct <= 1.02",
                total[2] / total[0] <= 1.02,
                fmt="{:.1f}",
            )
        )
    errors = three(st, lambda x: x["errors"])
    rows.append(
        Row("stream c=1/c=10 errors", *errors, "0", errors[2] == 0, fmt="{:d}", ratios=False)
    )
    rows.append(
        Row(
            "stream bytes identical to direct",
            *("yes" if st[k]["identical"] else "NO" for k in k3),
            "yes",
            st["gw"]["identical"],
            ratios=False,
        )
    )
    # many streams
    n = s.many_streams
    rows.append(
        Row(
            f"{n} concurrent streams: errors",
            *three(many, lambda x: x["errors"]),
            "0",
            many["gw"]["errors"] == 0,
            fmt="{:d}",
            ratios=False,
        )
    )
    for burst, label in (("second_burst", "warm pool"), ("first_burst", "new upstream conns")):
        ttfb99 = three(many, lambda x, b=burst: x[b]["ttfb"]["p99"])
        rows.append(Row(f"{n} streams TTFB p99 (ms, {label})", *ttfb99, fmt="{:.1f}"))
        rows.append(
            Row(
                f"added {n}-stream TTFB p99 (ms, {label})",
                None,
                ttfb99[1] - ttfb99[0],
                ttfb99[2] - ttfb99[0],
                fmt="{:.1f}",
            )
        )
    for q in ("p50", "max"):
        rows.append(
            Row(
                f"{n} streams total {q} (ms, warm pool)",
                *three(many, lambda x, q=q: x["second_burst"]["total"][q]),
                fmt="{:.0f}",
            )
        )
    peak = three(many, lambda x: x["vm_hwm_mb"])
    rows.append(
        Row(f"{n} streams peak RSS (MB, VmHWM)", *peak, "<= 120 MB", peak[2] <= 120, fmt="{:.1f}")
    )
    # idle and start-up
    idle = three(start, lambda x: x["idle_rss_mb_median"])
    rows.append(Row("idle RSS (MB)", *idle, "<= 60 MB", idle[2] <= 60, fmt="{:.1f}"))
    ready = three(start, lambda x: x["ready_ms_median"])
    rows.append(Row("start-up to ready (ms)", *ready, "<= 1000 ms", ready[2] <= 1000, fmt="{:.0f}"))
    return rows


def render(rows: list[Row]) -> str:
    head = ("figure", "direct", "minimal fwd", "gateway", "gw/fwd", "gw/direct", "target", "pass")
    table = [head]
    for r in rows:
        passed = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
        table.append(
            (
                r.figure,
                r.cell(r.direct),
                r.cell(r.fwd),
                r.cell(r.gw),
                r.ratio(r.gw, r.fwd),
                r.ratio(r.gw, r.direct),
                r.target,
                passed,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = []
    for i, row in enumerate(table):
        cells = [
            row[j].ljust(widths[j]) if j in (0, 6) else row[j].rjust(widths[j])
            for j in range(len(head))
        ]
        lines.append(" | ".join(cells).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------- main


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


def say(msg: str) -> None:
    print(msg, flush=True)


def jsonable(obj: object) -> object:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def report(rows: list[Row], results: dict, json_path: str | None, table_printed=False) -> None:
    """The table (unless printed already), the PASS/FAIL count and the JSON."""
    results["table"] = [
        {
            "figure": r.figure,
            "direct": r.direct,
            "fwd": r.fwd,
            "gw": r.gw,
            "target": r.target,
            "pass": r.passed,
        }
        for r in rows
    ]
    if not table_printed:
        say("")
        say(render(rows))
        say("")
    judged = [r for r in rows if r.passed is not None]
    failed = [r.figure for r in judged if not r.passed]
    say(f"targets: {len(judged) - len(failed)} PASS, {len(failed)} FAIL")
    if json_path:
        Path(json_path).write_text(json.dumps(jsonable(results), indent=2) + "\n")
        say(f"raw figures written to {json_path}")


def main(argv: Iterable[str] | None = None) -> int:
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
    args = parser.parse_args(list(argv) if argv is not None else None)
    s = Settings.make(args.quick, args.repeat)

    # SIGTERM becomes an exception so that `finally` stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fds = raise_fd_limit()
    cpus = sorted(os.sched_getaffinity(0))  # before the bench pins itself
    pin = choose_pinning()
    wrk = shutil.which("wrk")
    info = machine_info(pin, wrk)
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
    if pin:
        os.sched_setaffinity(0, {pin[1]})  # the bench is the load: it stays off the proxies' core

    results: dict = {"settings": asdict(s), "machine": info}
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Procs(tmp, pin)
    gc.disable()  # collections in the loader would show up as latency
    try:
        if args.workers_only:
            say(
                f"--workers 1 vs 2 at c=64, interleaved ({s.workers_rounds} x {s.wrk_seconds}s each)"
            )
            results["workers"] = phase_workers(procs, tmp, s, wrk, cpus)
            report(workers_rows(results["workers"]), results, args.json)
            return 0
        import phase_chunks  # after sys.modules has this module as "run"

        if args.chunks_only:
            say("CPU per relayed chunk: gateway, minimal forwarder, nginx")
            results["chunks"] = phase_chunks.phase_chunks(procs, tmp, s)
            report(phase_chunks.rows(results["chunks"]), results, args.json)
            return 0
        import phase_replicas

        if args.replicas_only:
            say("one provider over 3 replicas vs one base_url, c=64, interleaved")
            results["replicas"] = phase_replicas.phase_replicas(procs, tmp, s, wrk)
            report(phase_replicas.rows(results["replicas"]), results, args.json)
            return 0
        import phase_usage

        if args.usage_only:
            say("usage accounting and tracing on vs both off, c=64, interleaved")
            results["usage"] = phase_usage.phase_usage(procs, tmp, s, wrk)
            report(phase_usage.rows(results["usage"]), results, args.json)
            return 0
        say(f"[1/6] start-up and idle RSS ({s.startup_runs} start(s) each)")
        startup = {}
        up_child, startup["direct"] = start_and_measure("direct", procs, tmp, None, s.startup_runs)
        fwd_child, startup["fwd"] = start_and_measure(
            "fwd", procs, tmp, up_child.port, s.startup_runs
        )
        gw_child, startup["gw"] = start_and_measure("gw", procs, tmp, up_child.port, s.startup_runs)
        results["startup"] = startup
        targets = [
            Target("direct", "direct", up_child),
            Target("fwd", "minimal fwd", fwd_child),
            Target("gw", "gateway", gw_child),
        ]

        say(f"[2/6] non-stream latency, concurrency 1 ({s.rounds} x {s.latency_requests} each)")
        results["latency_c1"] = phase_latency(targets, s)
        gc.collect()

        say(f"[3/6] non-stream requests/s, concurrency 64 ({s.rounds} x {s.wrk_seconds}s each)")
        results["throughput_c64"] = phase_throughput(targets, s, wrk, procs, tmp)

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

        say(
            f"[6/6] --workers 1 vs 2 at c=64, interleaved "
            f"({s.workers_rounds} x {s.wrk_seconds}s each)"
        )
        results["workers"] = phase_workers(procs, tmp, s, wrk, cpus)
        say("[+] one provider over 3 replicas vs one base_url, c=64, interleaved")
        results["replicas"] = phase_replicas.phase_replicas(procs, tmp, s, wrk)
        say("[+] usage accounting and tracing on vs both off, c=64, interleaved")
        results["usage"] = phase_usage.phase_usage(procs, tmp, s, wrk)
        say(
            "[+] CPU per relayed chunk: gateway, minimal forwarder, nginx; streams one core carries"
        )
        results["chunks"] = phase_chunks.phase_chunks(procs, tmp, s)
        say("done measuring")
        for t in targets:
            if t.child.popen.poll() is not None:
                raise RuntimeError(f"{t.child.name} died during the bench:\n{t.child.log_tail()}")

        rows = build_rows(results, s) + workers_rows(results["workers"])
        rows += phase_replicas.rows(results["replicas"])
        rows += phase_usage.rows(results["usage"])
        rows += phase_chunks.rows(results["chunks"])
        say("")
        say(render(rows))
        say("")
        say(
            "added = gateway (or forwarder) percentile minus direct's same percentile; "
            f"c=64 is median of {s.rounds} run(s); stream schedule is "
            f"{STREAM_SCHEDULE_MS:.0f} ms, direct took "
            f"{results['streaming']['direct']['total_c1']['p50']:.1f} ms at c=1 and "
            f"{many['direct']['second_burst']['total']['p50']:.0f} ms p50 at {s.many_streams} streams"
        )
        direct_many = many["direct"]["second_burst"]["total"]["p50"]
        if direct_many > 1.05 * STREAM_SCHEDULE_MS:
            say(
                f"note: at {s.many_streams} streams even direct took {direct_many:.0f} ms against "
                f"the {STREAM_SCHEDULE_MS:.0f} ms schedule: the upstream and load core is "
                "saturated, so that phase's TTFB and total times are inflated for every target"
            )
        if s.quick:
            say("quick mode: few samples; run without --quick for figures to judge by")
        load = os.getloadavg()
        results["machine"]["loadavg_at_end"] = load
        say(
            f"load average at end: {' '.join(f'{x:.2f}' for x in load)}"
            + (
                " (other processes were busy: p99s are noisy)"
                if max(info["loadavg_at_start"][0], load[0]) > 0.5
                else ""
            )
        )
        if args.profile:
            results["profile"] = profile(targets[2], procs, tmp, wrk, Path(args.profile))
        report(rows, results, args.json, table_printed=True)
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
