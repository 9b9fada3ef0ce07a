"""`gateway serve --workers N`: N processes sharing one port.

Each worker is a whole gateway (its own event loop, pools, config watcher)
bound with SO_REUSEPORT, so the kernel spreads connections across them. The
parent only supervises: it forwards SIGHUP (reload) and SIGTERM/SIGINT
(graceful stop) to every worker, restarts a worker that dies unexpectedly,
and exits 0 once all have stopped cleanly. Each worker also watches the
config files itself, so a file change reaches all of them without a signal.
On Linux a worker is also sent SIGTERM when the parent dies, even by SIGKILL,
so workers are never left serving the port with nobody supervising them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("gateway.workers")

# A worker that dies sooner than this after starting is not restarted at
# once, so a crash loop does not spin the CPU.
_RESTART_BACKOFF = 1.0


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _stop_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux prctl; elsewhere
    a no-op). The standard library has no prctl, hence ctypes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(parent: int, index: int, run_one: Callable[[int], int]) -> None:
    """In the forked child: default signals, die with the parent, never return."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _stop_with_parent(parent)
    code = 1
    try:
        code = run_one(index)
    finally:
        os._exit(code)


def run_workers(count: int, run_one: Callable[[int], int]) -> int:
    """Fork `count` workers running `run_one(index)`; supervise until they stop."""
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    stopping = False

    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            _run_worker(parent, index, run_one)
        workers[pid] = (index, time.monotonic())

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(count):
        spawn(index)
    log.info("started %d workers: %s", count, ", ".join(map(str, workers)))

    worst = 0
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        if pid not in workers:
            continue
        index, started = workers.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, abs(code))
            continue
        log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
        wait = _RESTART_BACKOFF - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        if not stopping:
            spawn(index)
    return 0 if worst == 0 else 1
