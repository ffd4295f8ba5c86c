"""The maths of a load test: percentiles, distributions, the run summary, throughput over time.

Pure functions over RequestRecords; no I/O, no clocks.

Definitions (the usual serving-benchmark ones):
- TTFT: from sending the request to the first chunk carrying text.
- ITL: the gap between consecutive text chunks, pooled over all completed requests. A server
  that merges tokens into one chunk (a lagging client) produces one gap for them.
- TPOT: per request, (e2e - TTFT) / (output tokens - 1); its distribution over requests.
- e2e: from sending the request to the end marker ([DONE] or the WebSocket `done`).
- Throughput: output tokens of completed requests / the run's wall-clock duration.
- Connect: the time to open a new connection (TCP; for WebSockets also the upgrade handshake),
  over every request that opened one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from triode.load_tests.record import RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), numpy's default (linear between closest ranks); NaN for no
    values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q))


@dataclass(frozen=True, slots=True)
class Distribution:
    """Count, mean and percentiles of one latency, in seconds (NaN when empty)."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if len(values) == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        array = np.asarray(values, dtype=np.float64)
        p50, p90, p99 = (float(p) for p in np.percentile(array, PERCENTILES))
        return cls(len(array), float(array.mean()), p50, p90, p99, float(array.max()))


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run measured, the way people compare serving systems."""

    duration_s: float
    num_requests: int
    num_ok: int
    num_errors: int
    num_abandoned: int
    errors_by_kind: dict[str, int]
    output_tokens: int
    prompt_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft: Distribution
    itl: Distribution
    tpot: Distribution
    e2e: Distribution
    is_usage_reported: bool  # every completed request's token count came from usage
    # Connection set-up times of the requests that opened a connection (all of them, ok or not).
    connect: Distribution = field(default_factory=lambda: Distribution.of([]))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return nan_to_none(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        data = dict(data)
        for name in ("ttft", "itl", "tpot", "e2e", "connect"):
            if name not in data:  # written before connect times were measured
                continue
            values = {k: (math.nan if v is None else v) for k, v in data[name].items()}
            data[name] = Distribution(**values)
        return cls(**data)


def summarize(records: Iterable[RequestRecord], duration_s: float) -> Summary:
    """The summary of a run that took `duration_s` seconds of wall-clock time."""
    records = list(records)
    ok = [r for r in records if r.is_ok]
    errors = [r for r in records if r.error is not None]
    output_tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [gap for r in ok for gap in r.itls]
    tpots = [
        (r.e2e - r.ttft) / (r.output_tokens - 1)
        for r in ok
        if r.ttft is not None and r.e2e is not None and r.output_tokens > 1
    ]
    rate = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: math.nan)
    return Summary(
        duration_s=duration_s,
        num_requests=len(records),
        num_ok=len(ok),
        num_errors=len(errors),
        num_abandoned=sum(r.is_abandoned for r in records),
        errors_by_kind=dict(Counter(r.error for r in errors if r.error is not None)),
        output_tokens=output_tokens,
        prompt_tokens=sum(r.prompt_tokens or 0 for r in ok),
        output_tokens_per_s=rate(output_tokens),
        requests_per_s=rate(len(ok)),
        ttft=Distribution.of(ttfts),
        itl=Distribution.of(itls),
        tpot=Distribution.of(tpots),
        e2e=Distribution.of([r.e2e for r in ok if r.e2e is not None]),
        is_usage_reported=bool(ok) and all(r.is_usage_reported for r in ok),
        connect=Distribution.of([r.connect_s for r in records if r.connect_s is not None]),
    )


def token_timeline(
    records: Iterable[RequestRecord], bin_s: float = 1.0
) -> tuple[list[float], list[float]]:
    """Output tokens per second over the run, in bins of `bin_s` seconds: (bin starts, rates).

    Each completed or abandoned request's tokens are spread evenly over its text chunks, so a
    chunk that carries several tokens counts for them all."""
    if bin_s <= 0:
        raise ValueError("bin_s must be positive")
    arrivals: list[tuple[float, float]] = []
    for r in records:
        if not r.chunk_times:
            continue
        weight = max(r.output_tokens, len(r.chunk_times)) / len(r.chunk_times)
        arrivals.extend((r.start + t, weight) for t in r.chunk_times)
    if not arrivals:
        return [], []
    times, weights = np.asarray(arrivals, dtype=np.float64).T
    totals = np.bincount((times // bin_s).astype(np.int64), weights=weights)
    return (np.arange(len(totals)) * bin_s).tolist(), (totals / bin_s).tolist()


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Points of the empirical CDF: sorted values and the fraction at or below each."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    n = len(ordered)
    return ordered.tolist(), (np.arange(1, n + 1) / n).tolist()


def nan_to_none(value: Any) -> Any:
    """JSON has no NaN: an empty distribution's fields become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    return value
