"""`/metrics` across `--workers N`: every worker's figures, whichever worker is scraped.

The kernel hands a scrape to any one worker, so each worker publishes its
figures (`Metrics.state()`, as JSON) about once a second into its own slot of
a shared memory area, and the worker that answers a scrape adds the other
slots to its live figures. The others' figures are at most a publish interval
old.

The area is an anonymous shared mapping the parent makes before forking, so
it needs no file, directory or environment variable (the image runs on a
read-only root file system) and disappears with the process tree. Why not
prometheus_client's multiprocess mode: it needs its own metric objects, which
take a lock per observation (see metrics.py), and a writable directory.

A worker the parent restarts finds its predecessor's last figures in its slot
and carries them on, so counters keep counting up across a crash (less what
the dead worker counted after its last publish).

Each slot has one writer. A slot is a header (payload length, CRC-32) then
the payload; a reader that catches a write half done sees a CRC mismatch,
tries again, and else uses what it last read from that slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import struct
import zlib

import orjson

from .metrics import Metrics

log = logging.getLogger("gateway.metrics")

_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
# Virtual size per worker; pages are only backed by memory once written, and
# a state is a few kB (one entry per provider/model/status seen).
SLOT_BYTES = 8 << 20
PUBLISH_INTERVAL = 1.0
_READ_TRIES = 5


class MetricsBoard:
    """One slot per worker in memory shared by the whole process tree."""

    def __init__(self, workers: int, slot_bytes: int = SLOT_BYTES):
        self.workers = workers
        self.slot_bytes = slot_bytes
        # mmap(-1, ...) is MAP_SHARED | MAP_ANONYMOUS: forked children share it.
        self._mem = mmap.mmap(-1, workers * slot_bytes)
        self._last_read: dict[int, dict] = {}
        self._too_big_logged = False

    def write(self, index: int, state: dict) -> bool:
        payload = orjson.dumps(state)
        if _HEADER.size + len(payload) > self.slot_bytes:
            if not self._too_big_logged:
                self._too_big_logged = True
                log.warning(
                    "metrics of worker %d (%d bytes) exceed its shared slot; "
                    "other workers' scrapes show its older figures",
                    index,
                    len(payload),
                )
            return False
        base = index * self.slot_bytes
        start = base + _HEADER.size
        self._mem[start : start + len(payload)] = payload
        self._mem[base : base + _HEADER.size] = _HEADER.pack(len(payload), zlib.crc32(payload))
        return True

    def read(self, index: int) -> dict | None:
        """The slot's latest whole state; None if the worker never published."""
        base = index * self.slot_bytes
        for _ in range(_READ_TRIES):
            length, crc = _HEADER.unpack_from(self._mem, base)
            if length == 0:
                return None
            if _HEADER.size + length <= self.slot_bytes:
                start = base + _HEADER.size
                payload = self._mem[start : start + length]
                if zlib.crc32(payload) == crc:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        state = orjson.loads(payload)
                        self._last_read[index] = state
                        return state
        return self._last_read.get(index)

    def attach(self, index: int, metrics: Metrics) -> asyncio.Task:
        """Make worker `index` publish `metrics` and merge the others' at scrape.

        Returns the publishing task; cancelling it publishes one last time.
        """
        carried = self.read(index)  # a restarted worker's predecessor
        if carried is not None:
            carried["inflight"] = {}  # its requests ended with it
            for row in carried.get("replicas", ()):
                row[2] = row[6] = 0  # as did its requests on replicas and its ejections
            log.info("worker %d carries on the metrics of the worker it replaces", index)

        def own_state() -> dict:
            if carried is None:
                return metrics.state()
            total = Metrics()
            total.add_state(carried)
            total.add_state(metrics.state())
            return total.state()

        def peers() -> list[dict]:
            out = [s for i in range(self.workers) if i != index and (s := self.read(i))]
            if carried is not None:
                out.append(carried)
            return out

        metrics.peers = peers

        async def publish() -> None:
            try:
                while True:
                    self.write(index, own_state())
                    await asyncio.sleep(PUBLISH_INTERVAL)
            finally:
                self.write(index, own_state())

        return asyncio.get_running_loop().create_task(publish())
