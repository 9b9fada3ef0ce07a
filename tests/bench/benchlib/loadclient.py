"""Load: the bench's own keep-alive HTTP/1.1 client, and wrk."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchlib.common import BODY, CLIENT_HEADERS, HOST, PATH, raw_request, summary_ms


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
        self._steps = {
            "head": self._head,
            "fixed": self._fixed,
            "size": self._size,
            "data": self._data,
            "crlf": self._crlf,
            "trailer": self._trailer,
        }
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
        # One method per parser state, each saying whether to go on (True)
        # or wait for more bytes (False); a dict lookup, as cheap as an elif chain.
        steps = self._steps
        while steps[self.state](now):
            pass

    def _head(self, now: float) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
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
        return True

    def _fixed(self, now: float) -> bool:
        if self.remaining and self.buf:
            self._body(min(len(self.buf), self.remaining), now)
        if not self.remaining:
            self._finish(now)
        return False

    def _size(self, now: float) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n")
        if end < 0:
            return False
        size = int(bytes(buf[:end]).split(b";")[0], 16)
        del buf[: end + 2]
        self.remaining = size
        self.state = "data" if size else "trailer"
        return True

    def _data(self, now: float) -> bool:
        if not self.buf:
            return False
        self._body(min(len(self.buf), self.remaining), now)
        if self.remaining:
            return False
        self.state = "crlf"
        return True

    def _crlf(self, now: float) -> bool:
        buf = self.buf
        if len(buf) < 2:
            return False
        if buf[:2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        del buf[:2]
        self.state = "size"
        return True

    def _trailer(self, now: float) -> bool:  # no trailers expected: just the final CRLF
        buf = self.buf
        if len(buf) < 2:
            return False
        if buf[:2] != b"\r\n":
            raise ValueError("trailers are not supported by the bench client")
        del buf[:2]
        self._finish(now)
        return False

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


def error_counts(clients: Iterable[Client], extra: int = 0) -> dict:
    total: Counter = Counter()
    for c in clients:
        total.update(c.errors)
    if extra:
        total["non-200 status"] += extra
    return {"errors": sum(total.values()), "error_kinds": dict(total)}


def one_request(port: int, body: bytes = BODY) -> Reply:
    """One POST on a new connection, outside any measuring loop."""

    async def main() -> Reply:
        conn = await connect(port)
        try:
            return await asyncio.wait_for(conn.request(raw_request(port, body)), 10)
        finally:
            conn.close()

    return run_async(main())


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
{headers}
"""


def write_wrk_script(path: Path) -> Path:
    """The wrk script that POSTs BODY with CLIENT_HEADERS, written to `path`."""
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in CLIENT_HEADERS.items())
    path.write_text(WRK_SCRIPT.format(body=BODY.decode(), headers=headers))
    return path


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


def load_c64(wrk: str | None, prefix: list[str], script: Path, port: int, seconds: int) -> dict:
    """c=64 on `port` for `seconds`: wrk (on `prefix`, a taskset) or the Python loader."""
    if wrk:
        return run_wrk(wrk, prefix, script, port, seconds, 64)
    return python_load(port, seconds, 64)
