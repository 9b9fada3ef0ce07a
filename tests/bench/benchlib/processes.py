"""The processes the bench starts (upstream, minimal forwarder, gateway), and stopping them all."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib.common import (
    CHUNKS,
    HERE,
    HOST,
    INTERVAL,
    MANY_STREAMS_MAX,
    POOL,
    REPO,
    UPSTREAM_KEY_ENV,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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


@dataclass
class Target:
    key: str  # "direct" | "fwd" | "gw"
    label: str
    child: Child

    @property
    def port(self) -> int:
        return self.child.port


# For the many-streams phase: client connections past the default 4,096 (the
# gateway lowers it to what `ulimit -n` allows, and says so), and a head
# timeout of nginx's default 60 s (`client_header_timeout`). The phase opens
# all its connections before it sends a request: 5 s for 5,000 here, over 10
# s when the machine is slow, and the default 10 s closes the first of them
# as idle, which is what it is for. (In one full run on a slow machine, 2,129
# of 5,000 streams of the first burst found their connection closed: most
# likely this; the gateway's log was not kept.)
MANY_CONNECTIONS = f"limits: {{max_connections: {2 * MANY_STREAMS_MAX}, head_timeout: 60}}\n"


def gateway_yaml(where: str, head: str = "", tail: str = "") -> str:
    """A bench gateway's config: one provider `bench` at `where` (its `base_url:`
    or `replicas:` line), its key from the environment, one upstream
    connection per stream; `head` and `tail` add top-level and provider keys."""
    return (
        f"{head}providers:\n"
        "  - name: bench\n"
        "    provider_type: custom\n"
        f"{where}"
        f"    api_key: env:{UPSTREAM_KEY_ENV}\n"
        f"    max_connections: {POOL}\n"
        f"{tail}"
    )


def spawn_gateway(
    procs: Procs,
    name: str,
    config: Path,
    core: int | None,
    *,
    wrap: tuple[str, ...] | list[str] = (),
    args: tuple[str, ...] = (),
    env: dict | None = None,
) -> Child:
    """`python3 -m gateway serve` on `config` and a free port; `wrap` goes
    before it (a `taskset`), `args` after it."""
    port = free_port()
    argv = [*wrap, sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    argv += ["--listen", f"{HOST}:{port}", "--shutdown-grace", "1", *args]
    env = {UPSTREAM_KEY_ENV: "sk-bench-upstream", **(env or {})}
    return procs.spawn(name, argv, port, core, env=env)


def spawn_upstream(
    procs: Procs,
    name: str,
    core: int | None,
    chunks: int = CHUNKS,
    interval: float = INTERVAL,
    wrap: tuple[str, ...] | list[str] = (),
) -> Child:
    """The bench upstream (upstream.py) on a free port."""
    port = free_port()
    argv = [*wrap, sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
    argv += ["--chunks", str(chunks), "--interval", str(interval)]
    return procs.spawn(name, argv, port, core)


def spawn_kind(kind: str, procs: Procs, tmp: Path, upstream_port: int | None) -> Child:
    """One of the three targets: "direct" (the upstream), "fwd" or "gw"."""
    core_proxy, core_load = procs.pin if procs.pin else (None, None)
    if kind == "direct":
        return spawn_upstream(procs, "upstream", core_load)
    if kind == "fwd":
        port = free_port()
        argv = [sys.executable, str(HERE / "minimal_forwarder.py"), "--port", str(port)]
        argv += ["--upstream", f"http://{HOST}:{upstream_port}", "--pool", str(POOL)]
        return procs.spawn("minimal-forwarder", argv, port, core_proxy)
    config = tmp / "gateway.yaml"
    where = f"    base_url: http://{HOST}:{upstream_port}/v1\n"
    config.write_text(gateway_yaml(where, head=MANY_CONNECTIONS))
    return spawn_gateway(procs, "gateway", config, core_proxy)
