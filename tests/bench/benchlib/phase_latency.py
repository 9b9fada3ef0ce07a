"""Phase 2: non-stream latency at concurrency 1."""

from __future__ import annotations

import asyncio
from collections import Counter

from benchlib.common import BODY, Settings, raw_request, rotate, summary_ms
from benchlib.loadclient import Client, error_counts, run_async
from benchlib.processes import Target


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
                **error_counts([clients[t.key]], bad[t.key]),
            }
            for t in targets
        }

    return run_async(main())
