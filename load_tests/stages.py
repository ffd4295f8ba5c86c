"""Ramped connection stages, as k6's `stages`: `--stages 30s:100,60s:1000,30s:0`.

Each stage moves the number of virtual users (VUs) linearly from the previous stage's target
(0 at the start) to its own over its duration: one VU more (or less) every `duration / change`
seconds, the first change at the stage's start (a `0s:N` stage changes at once). A VU sends its
requests one after another, each over a connection of its own (a TCP connect, plus the upgrade
handshake on a WebSocket), so a ramp is a storm of connections. A VU told to stop (ramp down,
the end of the last stage) finishes its request first, as k6's graceful ramp-down does; the
newest VU stops first. Every request belongs to the stage in which it was sent; each stage
reports its connect times, TTFT and errors.

    stages = parse_stages("30s:100,60s:1000,30s:0")
    run, reports, vus = await run_stages(transports, specs, stages, request_timeout_s=60)
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import trio

from triode.load_tests.record import RequestRecord
from triode.load_tests.runner import Progress, RunResult, Transport, send_one
from triode.load_tests.stats import Distribution, nan_to_none, summarize
from triode.load_tests.workload import RequestSpec

_DURATION = re.compile(r"^\s*([0-9.]+)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Stage:
    duration_s: float
    target: int  # VUs at the stage's end


def parse_stages(text: str) -> tuple[Stage, ...]:
    """'30s:100,1m:1000,30s:0' -> stages (durations in ms, s, m or h; bare numbers are s)."""
    stages = []
    for part in (p for p in text.split(",") if p.strip()):
        duration, _, target = part.partition(":")
        match = _DURATION.match(duration)
        if match is None or not target.strip().isdigit():
            raise ValueError(f"{part.strip()!r}: expected DURATION:VUS, e.g. 30s:100")
        seconds = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
        if not math.isfinite(seconds):
            raise ValueError(f"{part.strip()!r}: the duration must be finite")
        stages.append(Stage(seconds, int(target)))
    if not stages:
        raise ValueError("no stages given, e.g. 30s:100,60s:1000,30s:0")
    return tuple(stages)


def describe_stages(stages: Sequence[Stage]) -> str:
    return ",".join(f"{s.duration_s:g}s:{s.target}" for s in stages)


def vu_changes(stages: Sequence[Stage]) -> list[tuple[float, int]]:
    """(seconds from the start, +1 or -1) for every VU started or stopped, in time order."""
    changes: list[tuple[float, int]] = []
    start, current = 0.0, 0
    for stage in stages:
        change = stage.target - current
        for step in range(abs(change)):
            changes.append((start + stage.duration_s * step / abs(change), 1 if change > 0 else -1))
        start += stage.duration_s
        current = stage.target
    return changes


@dataclass(frozen=True, slots=True)
class StageReport:
    """What one stage's requests saw."""

    index: int
    start_s: float
    end_s: float
    from_vus: int
    to_vus: int
    peak_vus: int
    num_requests: int
    num_ok: int
    num_errors: int
    errors_by_kind: dict[str, int]
    connect: Distribution
    ttft: Distribution

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        for name in ("connect", "ttft"):
            data[name] = nan_to_none(asdict(data[name]))
        return data


def stage_reports(
    stages: Sequence[Stage], records: Sequence[RequestRecord], vus: Sequence[tuple[float, int]]
) -> list[StageReport]:
    """Group the records by the stage they were sent in."""
    reports = []
    start, previous = 0.0, 0
    for i, stage in enumerate(stages):
        end = start + stage.duration_s
        is_last = i == len(stages) - 1
        # Requests sent after the last stage's end (a VU between stop and exit) count in it.
        mine = [r for r in records if start <= r.start < end or (is_last and r.start >= end)]
        before = [n for t, n in vus if t <= start]
        during = [n for t, n in vus if start <= t < end or (is_last and t >= end)]
        peak = max([*before[-1:], *during], default=0)
        errors = Counter(r.error for r in mine if r.error is not None)
        reports.append(
            StageReport(
                index=i + 1,
                start_s=start,
                end_s=end,
                from_vus=previous,
                to_vus=stage.target,
                peak_vus=peak,
                num_requests=len(mine),
                num_ok=sum(r.is_ok for r in mine),
                num_errors=sum(errors.values()),
                errors_by_kind=dict(errors),
                connect=Distribution.of([r.connect_s for r in mine if r.connect_s is not None]),
                ttft=Distribution.of([r.ttft for r in mine if r.is_ok and r.ttft is not None]),
            )
        )
        start, previous = end, stage.target
    return reports


def stages_table(reports: Sequence[dict[str, Any]]) -> str:
    """The per-stage table for the terminal, from StageReport.to_json() dicts (as saved)."""

    def ms(value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else f"{value * 1000:.0f}"

    header = ["stage", "span (s)", "VUs", "peak", "requests", "ok", "errors",
              "connect p50/p90/p99/max (ms)", "TTFT p50/p99 (ms)", "errors by kind"]  # fmt: skip
    rows = [header]
    for r in reports:
        c, ttft = r["connect"], r["ttft"]
        rows.append([
            str(r["index"]), f"{r['start_s']:g}-{r['end_s']:g}", f"{r['from_vus']}->{r['to_vus']}",
            str(r["peak_vus"]), str(r["num_requests"]), str(r["num_ok"]), str(r["num_errors"]),
            "/".join(ms(c[k]) for k in ("p50", "p90", "p99", "max")),
            f"{ms(ttft['p50'])}/{ms(ttft['p99'])}",
            ", ".join(f"{k}: {n}" for k, n in sorted(r["errors_by_kind"].items())) or "-",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


async def run_stages(
    transports: Sequence[Transport],
    specs: Sequence[RequestSpec],
    stages: Sequence[Stage],
    *,
    request_timeout_s: float,
    show_progress: bool = False,
    label: str = "",
) -> tuple[RunResult, list[StageReport], list[tuple[float, int]]]:
    """Run the stages; returns the run, the per-stage reports and the VU count over time."""
    if not specs:
        raise ValueError("the stages need a workload to draw requests from")
    progress = Progress(None, label, is_shown=show_progress)
    run_start = progress.start
    records: list[RequestRecord] = []
    vus: list[tuple[float, int]] = [(0.0, 0)]
    running: list[trio.Event] = []  # each running VU's stop signal, oldest first
    numbers = itertools.count()
    workload = itertools.cycle(specs)

    async def virtual_user(stop: trio.Event) -> None:
        while not stop.is_set():
            n = next(numbers)
            spec = replace(next(workload), index=n)
            transport = transports[n % len(transports)]
            record = await send_one(transport, spec, run_start, request_timeout_s)
            records.append(record)
            progress.add(record)

    def note_count() -> None:
        vus.append((trio.current_time() - clock_start, len(running)))

    try:
        async with trio.open_nursery() as nursery:
            clock_start = trio.current_time()
            for at, change in vu_changes(stages):
                await trio.sleep_until(clock_start + at)
                if change > 0:
                    stop = trio.Event()
                    running.append(stop)
                    nursery.start_soon(virtual_user, stop)
                else:
                    running.pop().set()
                note_count()
            await trio.sleep_until(clock_start + sum(s.duration_s for s in stages))
            while running:  # the end: every VU finishes its request and leaves
                running.pop().set()
            note_count()
    finally:
        progress.close()
    records.sort(key=lambda r: r.start)
    duration = progress.last_end - run_start
    run = RunResult(records, duration, summarize(records, duration))
    return run, stage_reports(stages, records, vus), vus
