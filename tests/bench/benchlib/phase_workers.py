"""Phase 6: `serve --workers 1` vs `--workers 2`."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
from pathlib import Path

from benchlib.common import (
    HOST,
    Settings,
    rotate,
)
from benchlib.loadclient import python_load, run_wrk, write_wrk_script
from benchlib.machine import cpu_seconds, machine_cpu, process_tree
from benchlib.processes import (
    MANY_CONNECTIONS,
    Child,
    Procs,
    gateway_yaml,
    spawn_gateway,
    spawn_upstream,
    wait_ready,
)
from benchlib.report import Row


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
    upstream = spawn_upstream(procs, "upstream-workers", None, wrap=load_on)
    wait_ready(upstream)
    script = write_wrk_script(tmp / "post-workers.lua")
    config = tmp / "gateway-workers.yaml"
    where = f"    base_url: http://{HOST}:{upstream.port}/v1\n"
    config.write_text(gateway_yaml(where, head=MANY_CONNECTIONS))
    gateways: dict[int, Child] = {
        n: spawn_gateway(
            procs, f"gateway-workers{n}", config, None, wrap=gw_on, args=("--workers", str(n))
        )
        for n in (1, 2)
    }
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
