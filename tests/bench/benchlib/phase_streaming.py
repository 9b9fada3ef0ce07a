"""Phase 4: streams at concurrency 1 and 10."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from benchlib.common import STREAM_BODY, Settings, raw_request, rotate, summary_ms
from benchlib.loadclient import Client, Reply, error_counts, run_async
from benchlib.processes import Target


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
            errors = error_counts([c1[t.key], *c10[t.key]], r["non_200"])
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
