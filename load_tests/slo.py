"""Service-level objectives: `--slo ttft_p99=800ms,itl_p99=200ms,errors=0` as pass/fail.

A threshold names a figure of the run's summary and the bound it must keep. Latencies
(`ttft_`, `itl_`, `tpot_`, `e2e_`, `connect_` with `p50`, `p90`, `p99`, `mean` or `max`) and
error figures (`errors`: a count; `error_rate`: a fraction, or a percentage with `%`) are upper
bounds; throughputs (`output_tok_s`, `requests_per_s`) are lower bounds. Latencies take a unit
(`ms`, `s` or `us`); a bare number is milliseconds, as in k6's thresholds.

    slo = parse_slo("ttft_p99=800ms,itl_p99=200ms,errors=0")
    verdict = check_slo(slo, summary)   # verdict.is_met, verdict.lines()

NOTE: a run with an SLO that names no error figure also requires `errors=0`: a run whose
requests failed has no meaningful latencies (failed requests do not count in them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from triode.load_tests.stats import Distribution, Summary

LATENCIES = ("ttft", "itl", "tpot", "e2e", "connect")
STATISTICS = ("p50", "p90", "p99", "mean", "max")
_UNITS_S = {"ms": 1e-3, "s": 1.0, "us": 1e-6}
_THRESHOLD = re.compile(r"^\s*([a-z0-9_]+)\s*=\s*([0-9.eE+-]+)\s*(ms|s|us|%)?\s*$")


@dataclass(frozen=True, slots=True)
class Threshold:
    """One bound: `figure <= limit` (is_upper) or `figure >= limit`; latencies in seconds."""

    name: str
    limit: float
    is_upper: bool
    text: str  # as the user wrote it

    def value_of(self, summary: Summary) -> float:
        return _FIGURES[self.name](summary)

    def is_met_by(self, value: float) -> bool:
        if math.isnan(value):  # nothing measured (every request failed): not met
            return False
        return value <= self.limit if self.is_upper else value >= self.limit

    def format(self, value: float) -> str:
        """A figure in this threshold's unit (ms for latencies)."""
        if math.isnan(value):
            return "nothing measured"
        if self.name.split("_")[0] in LATENCIES:
            return f"{value * 1000:.1f} ms"
        if self.name == "error_rate":
            return f"{value * 100:.2f}%"
        if self.name == "errors":
            return f"{value:.0f}"
        return f"{value:.2f}"


@dataclass(frozen=True, slots=True)
class SLO:
    thresholds: tuple[Threshold, ...]

    def __str__(self) -> str:
        return ",".join(t.text for t in self.thresholds)


@dataclass(frozen=True, slots=True)
class Check:
    threshold: Threshold
    value: float
    is_met: bool

    def line(self) -> str:
        t = self.threshold
        sign = ("<=" if t.is_upper else ">=") if self.is_met else (">" if t.is_upper else "<")
        verdict = "ok  " if self.is_met else "FAIL"
        return f"{verdict} {t.name} = {t.format(self.value)} {sign} {t.format(t.limit)}"


@dataclass(frozen=True, slots=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def is_met(self) -> bool:
        return all(c.is_met for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.is_met]

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks]


def _latency(name: str, statistic: str) -> Callable[[Summary], float]:
    def get(summary: Summary) -> float:
        distribution: Distribution = getattr(summary, name)
        return float(getattr(distribution, statistic))

    return get


def _error_rate(summary: Summary) -> float:
    return summary.num_errors / summary.num_requests if summary.num_requests else math.nan


_FIGURES: dict[str, Callable[[Summary], float]] = {
    f"{name}_{stat}": _latency(name, stat) for name in LATENCIES for stat in STATISTICS
}
_FIGURES["errors"] = lambda s: float(s.num_errors)
_FIGURES["error_rate"] = _error_rate
_FIGURES["output_tok_s"] = lambda s: s.output_tokens_per_s
_FIGURES["requests_per_s"] = lambda s: s.requests_per_s
_LOWER_BOUNDS = frozenset({"output_tok_s", "requests_per_s"})
KNOWN_FIGURES = (
    f"{{{','.join(LATENCIES)}}}_{{{','.join(STATISTICS)}}} (e.g. ttft_p99), errors, error_rate, "
    "output_tok_s, requests_per_s"
)


def parse_slo(text: str) -> SLO:
    """'ttft_p99=800ms,errors=0' -> an SLO; ValueError naming the bad part otherwise."""
    thresholds: list[Threshold] = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _THRESHOLD.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r}: expected NAME=VALUE, e.g. ttft_p99=800ms")
        name, number, unit = match.groups()
        if name not in _FIGURES:
            raise ValueError(f"{name!r}: unknown figure; known: {KNOWN_FIGURES}")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"{part.strip()!r}: {number!r} is not a number") from None
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{part.strip()!r}: the limit must be a finite number >= 0")
        is_latency = name.split("_")[0] in LATENCIES
        if is_latency:
            if unit == "%":
                raise ValueError(f"{part.strip()!r}: a latency takes ms, s or us")
            value *= _UNITS_S[unit or "ms"]
        elif unit == "%":
            if name != "error_rate":
                raise ValueError(f"{part.strip()!r}: only error_rate takes a percentage")
            value /= 100
        elif unit is not None:
            raise ValueError(f"{part.strip()!r}: {name} takes no unit")
        thresholds.append(Threshold(name, value, name not in _LOWER_BOUNDS, part.strip()))
    if not thresholds:
        raise ValueError("an SLO needs at least one threshold, e.g. ttft_p99=800ms")
    if not any(t.name in ("errors", "error_rate") for t in thresholds):
        thresholds.append(Threshold("errors", 0.0, True, "errors=0"))
    return SLO(tuple(thresholds))


def check_slo(slo: SLO, summary: Summary) -> Verdict:
    checks = []
    for threshold in slo.thresholds:
        value = threshold.value_of(summary)
        checks.append(Check(threshold, value, threshold.is_met_by(value)))
    return Verdict(tuple(checks))
