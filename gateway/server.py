"""The process: start the HTTP server on a snapshot, handle signals, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from .app import LIFECYCLE, METRICS, create_app
from .config import parse_listen
from .inbound import GuardedAppRunner, InboundGuard
from .metrics_board import MetricsBoard
from .reload import Reloader, load_snapshot
from .snapshot import SnapshotHolder
from .watcher import ConfigWatcher

log = logging.getLogger("gateway.server")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def start_demo_upstream(listen: str | socket.socket) -> web.AppRunner:
    """The demo upstream on HOST:PORT, or on a socket bound beforehand (demo_port.py)."""
    from .demo_upstream import create_demo_app

    runner = web.AppRunner(create_demo_app(), access_log=None)
    await runner.setup()
    if isinstance(listen, socket.socket):
        host, port = listen.getsockname()[:2]
        await web.SockSite(runner, listen).start()
    else:
        host, port = parse_listen(listen)
        await web.TCPSite(runner, host, port).start()
    log.info("demo upstream listening on http://%s:%d/v1", host, port)
    return runner


class RedactMalformedRequests(logging.Filter):
    """aiohttp logs a malformed request with a traceback quoting the bytes it
    choked on, e.g. the start of an oversize Authorization header: a key.
    Keep one line naming the kind of problem, without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg = "rejected a malformed HTTP request: %s (status %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_REDACT = RedactMalformedRequests()


def tune_gc() -> None:
    """Freeze what start-up made and collect the young generation less often.

    Each request allocates a few dozen short-lived tracked objects (futures,
    coroutines, header maps); with the default threshold (700) the collector
    ran every ~30 requests at c=64 and, measured with the bench's wrk load,
    took the gateway from ~70 to ~100 us of CPU per request. Almost nothing
    here forms cycles (refcounting frees it), so a larger threshold costs
    little memory; `freeze` keeps the ~45,000 start-up objects (modules,
    config) out of every full collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


async def start_gateway(
    holder: SnapshotHolder,
    host: str,
    port: int,
    shutdown_grace: float = 30.0,
    reloader: Reloader | None = None,
    reuse_port: bool = False,
) -> web.AppRunner:
    """Serve `holder`'s snapshots on host:port; `runner.addresses` has the bound port.

    With a `reloader`, /readyz reports its status and the admin API exists.
    The header size limit is read once here: aiohttp fixes it per server.
    Client connections get the time limits and the cap of `limits:` (read
    live: see inbound.py).
    """
    header_limit = holder.current.config.limits.max_header_bytes
    server_log = logging.getLogger("aiohttp.server")
    if _REDACT not in server_log.filters:
        server_log.addFilter(_REDACT)
    runner = GuardedAppRunner(
        create_app(holder, reloader),
        guard=InboundGuard(holder),
        access_log=None,
        handler_cancellation=True,  # a client that leaves cancels its upstream request
        # request_body decodes gzip/deflate itself, bounded by the body limit;
        # aiohttp's decoder has no bound (a gzip bomb inflated in full).
        auto_decompress=False,
        shutdown_timeout=shutdown_grace,
        max_line_size=header_limit,
        max_field_size=header_limit,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    return runner


async def serve(
    config_path: Path,
    listen: str | None = None,
    demo_listen: str | socket.socket | None = None,
    shutdown_grace: float = 30.0,
    watch_interval: float = 0.5,
    drain_delay: float = 0.0,
    reuse_port: bool = False,
    metrics_board: MetricsBoard | None = None,
    worker_index: int = 0,
) -> None:
    """Run one gateway process until SIGTERM/SIGINT.

    With `--workers N` each worker gets the shared `metrics_board` and its
    index, so that `/metrics` answers for all of them.
    """
    holder = SnapshotHolder(load_snapshot(config_path))
    config = holder.current.config
    host, port = parse_listen(listen) if listen else (config.listen_host, config.listen_port)

    reloader = Reloader(config_path, holder)
    # Started before anything awaits, so a change made while the server
    # starts is seen.
    watcher = ConfigWatcher(reloader, interval=watch_interval)
    watcher.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    demo = runner = publisher = None
    try:
        demo = await start_demo_upstream(demo_listen) if demo_listen else None
        runner = await start_gateway(holder, host, port, shutdown_grace, reloader, reuse_port)
        if metrics_board is not None:
            publisher = metrics_board.attach(worker_index, runner.app[METRICS])
        tune_gc()
        log.info(
            "gateway listening on http://%s:%d/v1 with %d provider(s) (config %s)",
            host,
            port,
            len(holder.current.providers),
            holder.current.digest,
        )
        loop.add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        # Readiness fails first, so a load balancer stops sending new
        # requests; then the listener closes and requests in flight get up
        # to the grace period to finish.
        runner.app[LIFECYCLE].draining = True
        if drain_delay > 0:
            log.info("draining: /readyz answers 503; still accepting for %gs", drain_delay)
            await asyncio.sleep(drain_delay)
        log.info("stopping: finishing requests in flight (up to %gs)", shutdown_grace)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await watcher.stop()
        if runner is not None:
            await runner.cleanup()
        if publisher is not None:  # after the last request, so its figures are in
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        if demo is not None:
            await demo.cleanup()
