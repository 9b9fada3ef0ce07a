"""Fetch each provider's model list in the background, at start-up and after reloads.

Metric labels name a model only when a known list has it (forwarder.model_label);
a list is otherwise fetched only by `GET /v1/models`, so until someone asked,
every model of a fetched list (the demo's too) was counted as "other". The
warmer fetches the lists of new runtimes (a reload keeps the runtimes, and so
the lists, of unchanged providers) with bounded concurrency. It never delays
a request: requests do not wait on it. A provider with a static `models:`
list is never asked. A failed fetch is logged once per runtime and not
retried here; the next `GET /v1/models` tries again.
"""

from __future__ import annotations

import asyncio
import logging

from .models import UpstreamListError, provider_models
from .snapshot import ProviderRuntime, Snapshot, SnapshotHolder

log = logging.getLogger("gateway.models")
CONCURRENCY = 4


class ModelWarmer:
    def __init__(self, holder: SnapshotHolder, concurrency: int = CONCURRENCY):
        self.holder = holder
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._queued: set[ProviderRuntime] = set()  # being fetched (strong refs, briefly)

    def warm(self, *_: object) -> None:
        """Start fetching the lists the live snapshot's providers lack; returns at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a reload outside the server): nothing to warm
            return
        snapshot = self.holder.acquire()
        try:
            todo = [r for r in snapshot.providers.values() if self._wanted(r)]
        finally:
            if not todo:
                self.holder.release(snapshot)
        if not todo:
            return
        self._queued.update(todo)
        task = loop.create_task(self._fetch_all(snapshot, todo))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wanted(self, runtime: ProviderRuntime) -> bool:
        cache = runtime.model_cache
        return (
            runtime.config.models is None
            and runtime not in self._queued
            and not cache.ids
            and cache.pending is None
            and cache.error is None  # failed before: logged then, not retried here
        )

    async def _fetch_all(self, snapshot: Snapshot, runtimes: list[ProviderRuntime]) -> None:
        # The lease keeps these runtimes (and their sessions) open meanwhile.
        try:
            await asyncio.gather(*(self._fetch(r, snapshot) for r in runtimes))
        finally:
            self._queued.difference_update(runtimes)
            self.holder.release(snapshot)

    async def _fetch(self, runtime: ProviderRuntime, snapshot: Snapshot) -> None:
        async with self._limit:
            try:
                await provider_models(runtime, snapshot.config.models)
            except UpstreamListError as exc:  # already redacted
                log.warning(
                    "model list of provider '%s' not fetched in the background (its "
                    "models' metric labels read 'other' until it is): %s",
                    runtime.name,
                    exc,
                )
            except Exception:
                log.exception("model list of provider '%s': fetch failed", runtime.name)

    async def idle(self) -> None:
        """Wait for the fetches started so far (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
