"""The table: rows, their targets, rendering, and the JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from benchlib.common import STREAM_SCHEDULE_MS, Settings, say


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


def notes(results: dict, s: Settings, info: dict) -> None:
    """What to read the table with: the schedule, saturation, quick mode, load."""
    many = results["many_streams"]
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
