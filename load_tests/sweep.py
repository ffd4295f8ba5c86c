"""A rate sweep: the same workload at rising offered loads, to find where a server stops keeping up.

    python -m triode.load_tests run --url http://127.0.0.1:8000 --sweep --peer vllm=http://...:8001 \\
        --num-requests 64 --max-tokens 64 --json sweep.json --png sweep.png

Each point is an open-loop run (Poisson arrivals, seeded) of the whole workload at one offered
rate. `--rate R1,R2,...` gives the rates; `--sweep` finds them per server: a closed-loop probe at
`--concurrency` measures the rate it can complete (its saturation), then `--sweep-points` rates
are spaced geometrically from 1/8 to 2 times that, so the knee lies inside the range.

The knee: the highest offered rate at which the server still keeps up, with every lower rate
kept up too. A point keeps up when every request succeeded and requests completed at least
`KEEP_UP_FRACTION` as fast as they arrived, both rates fitted over all requests (the slope of
the sorted completion times, and of the send times, against their rank). Below saturation
completions follow arrivals (the ratio is ~1 whatever the Poisson draw); above it they come at
the server's pace and the queue grows. With `--slo`, each server's highest rate that
meets it is reported too ("what rate can this server sustain within my latency budget?").
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from triode.load_tests.record import RequestRecord
from triode.load_tests.runner import RunResult, run_workload
from triode.load_tests.slo import SLO, Verdict, check_slo
from triode.load_tests.stats import Summary

KEEP_UP_FRACTION = 0.9
SWEEP_FORMAT_VERSION = 1
DEFAULT_SWEEP_POINTS = 6
AUTO_LOW, AUTO_HIGH = 1 / 8, 2.0  # auto rates, as fractions of the probed saturation rate


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One offered rate's run."""

    rate: float  # offered, requests/s
    summary: Summary
    arrival_rps: float  # the rate the Poisson draw actually sent at
    completion_rps: float  # the rate requests completed at
    slo_failures: tuple[str, ...] | None = None  # None: no SLO given

    @property
    def keeps_up(self) -> bool:
        s = self.summary
        if s.num_errors or s.num_ok < 2 or not math.isfinite(self.completion_rps):
            return False
        return self.completion_rps >= KEEP_UP_FRACTION * self.arrival_rps

    @property
    def meets_slo(self) -> bool | None:
        return None if self.slo_failures is None else not self.slo_failures

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "arrival_rps": _finite(self.arrival_rps),
            "completion_rps": _finite(self.completion_rps),
            "keeps_up": self.keeps_up,
            "meets_slo": self.meets_slo,
            "slo_failures": None if self.slo_failures is None else list(self.slo_failures),
            "summary": self.summary.to_json(),
        }


@dataclass(slots=True)
class ServerSweep:
    """One server's points, in rising rate."""

    label: str
    url: str
    model: str
    points: list[SweepPoint] = field(default_factory=list)
    saturation_rps: float | None = None  # the closed-loop probe (--sweep), else None

    @property
    def knee(self) -> SweepPoint | None:
        """The highest rate kept up with every lower rate kept up; None if the lowest fails."""
        knee = None
        for point in self.points:
            if not point.keeps_up:
                break
            knee = point
        return knee

    @property
    def is_knee_bounded(self) -> bool:
        """Whether a higher rate than the knee was tried and not kept up (else the knee is only
        a lower bound)."""
        knee = self.knee
        return knee is not None and knee is not self.points[-1]

    @property
    def max_rate_within_slo(self) -> float | None:
        rates = [p.rate for p in self.points if p.meets_slo]
        return max(rates) if rates else None

    def to_json(self) -> dict[str, Any]:
        knee = self.knee
        return {
            "label": self.label,
            "url": self.url,
            "model": self.model,
            "saturation_rps": self.saturation_rps,
            "knee_rate": None if knee is None else knee.rate,
            "is_knee_bounded": self.is_knee_bounded,
            "max_rate_within_slo": self.max_rate_within_slo,
            "points": [p.to_json() for p in self.points],
        }


def auto_rates(saturation_rps: float, num_points: int = DEFAULT_SWEEP_POINTS) -> list[float]:
    """`num_points` rates spaced geometrically around the probed saturation rate."""
    if not saturation_rps > 0:
        raise ValueError(f"the probe completed no requests (rate {saturation_rps})")
    if num_points < 2:
        raise ValueError("a sweep needs at least 2 points")
    low, high = math.log(AUTO_LOW * saturation_rps), math.log(AUTO_HIGH * saturation_rps)
    step = (high - low) / (num_points - 1)
    return [_round_rate(math.exp(low + i * step)) for i in range(num_points)]


def _round_rate(rate: float) -> float:
    """Three significant figures: rates people can read and re-type."""
    return float(f"{rate:.3g}")


def sweep_point(rate: float, run: RunResult, slo: SLO | None) -> SweepPoint:
    verdict: Verdict | None = check_slo(slo, run.summary) if slo is not None else None
    failures = None if verdict is None else tuple(c.line() for c in verdict.failures)
    return SweepPoint(
        rate=rate,
        summary=run.summary,
        arrival_rps=_rate_over([r.start for r in run.records]),
        completion_rps=_rate_over(_completion_times(run.records)),
        slo_failures=failures,
    )


def _completion_times(records: list[RequestRecord]) -> list[float]:
    return [r.start + r.e2e for r in records if r.is_ok and r.e2e is not None]


def _rate_over(times: list[float]) -> float:
    """Events per second: 1 / the least-squares slope of the sorted times against their rank.

    NOTE: a fit over every event, not (n - 1) / (last - first): one slow request at either end
    (a stall on a shared machine) would otherwise decide the whole point."""
    if len(times) < 2:
        return math.nan
    ordered = np.sort(np.asarray(times, dtype=np.float64))
    slope = float(np.polyfit(np.arange(len(ordered)), ordered, 1)[0])
    return 1 / slope if slope > 0 else math.inf


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


async def sweep_server(
    args: argparse.Namespace, label: str, url: str, slo: SLO | None
) -> ServerSweep:
    """Warm up, probe if the rates are automatic, then one open-loop run per rate."""
    from triode.load_tests.loadgen import build_workload, run_config, target_transports, warm_up
    from triode.load_tests.servers import discover_model

    specs = build_workload(args)
    model = args.model or await discover_model(url, args.api_key)
    result = ServerSweep(label, url, model)
    # NOTE: the pool holds a connection per request: an overloaded server keeps them all open.
    async with target_transports(args, url, model, max(len(specs), args.concurrency)) as pool:
        await warm_up(pool, args, args.concurrency)
        rates = list(args.rate)
        if args.sweep:
            probe = await run_workload(
                pool, specs, run_config(args, f"{label} probe", mode="closed")
            )
            result.saturation_rps = probe.summary.requests_per_s
            rates = auto_rates(probe.summary.requests_per_s, args.sweep_points)
        for rate in rates:
            # An offered load is offered whatever is in flight: no client-side cap.
            config = run_config(
                args, f"{label} @ {rate:g}/s", mode="open", rate=rate, max_concurrency=0
            )
            run = await run_workload(pool, specs, config)
            result.points.append(sweep_point(rate, run, slo))
            print(point_line(label, result.points[-1]), flush=True)
    return result


def point_line(label: str, point: SweepPoint) -> str:
    """One printed line per point, as the sweep goes."""
    s = point.summary
    verdict = "keeps up" if point.keeps_up else "FALLS BEHIND"
    slo = "" if point.meets_slo is None else ("; SLO met" if point.meets_slo else "; SLO missed")
    return (
        f"{label} @ {point.rate:g} req/s: completed {point.completion_rps:.2f}/s of "
        f"{point.arrival_rps:.2f}/s sent ({verdict}); {s.output_tokens_per_s:.1f} tok/s; "
        f"TTFT p50/p99 {_ms(s.ttft.p50)}/{_ms(s.ttft.p99)}; "
        f"ITL p50/p99 {_ms(s.itl.p50)}/{_ms(s.itl.p99)}; errors {s.num_errors}{slo}"
    )


def knee_line(sweep: ServerSweep) -> str:
    knee = sweep.knee
    if knee is None:
        text = f"{sweep.label}: no knee in range: it fell behind at the lowest rate tried"
    elif sweep.is_knee_bounded:
        text = f"{sweep.label}: knee at {knee.rate:g} req/s ({knee.summary.output_tokens_per_s:.1f} tok/s)"
    else:
        text = f"{sweep.label}: kept up with every rate tried (knee >= {knee.rate:g} req/s)"
    slo_rate = sweep.max_rate_within_slo
    if any(p.meets_slo is not None for p in sweep.points):
        text += "; SLO met up to " + (f"{slo_rate:g} req/s" if slo_rate else "no rate tried")
    return text


def save_sweep(
    sweeps: list[ServerSweep], config: dict[str, Any], slo: SLO | None, path: str | Path
) -> None:
    """One JSON for the whole sweep: the workload, the SLO and every server's points."""
    data = {
        "version": SWEEP_FORMAT_VERSION,
        "kind": "sweep",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workload": config.get("workload", ""),
        "config": config,
        "keep_up_fraction": KEEP_UP_FRACTION,
        "slo": None if slo is None else str(slo),
        "servers": [s.to_json() for s in sweeps],
    }
    Path(path).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def load_sweep(path: str | Path) -> tuple[list[ServerSweep], dict[str, Any]]:
    """The servers' sweeps and the file's other fields (for re-plotting)."""
    data = orjson.loads(Path(path).read_bytes())
    if data.get("kind") != "sweep" or data.get("version") != SWEEP_FORMAT_VERSION:
        raise ValueError(f"{path}: not a sweep result of version {SWEEP_FORMAT_VERSION}")
    sweeps = []
    for server in data["servers"]:
        sweep = ServerSweep(server["label"], server["url"], server["model"])
        sweep.saturation_rps = server.get("saturation_rps")
        for point in server["points"]:
            failures = point.get("slo_failures")
            sweep.points.append(
                SweepPoint(
                    rate=point["rate"],
                    summary=Summary.from_json(point["summary"]),
                    arrival_rps=_nan_if_none(point["arrival_rps"]),
                    completion_rps=_nan_if_none(point["completion_rps"]),
                    slo_failures=None if failures is None else tuple(failures),
                )
            )
        sweeps.append(sweep)
    return sweeps, data


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}ms"
