"""Side by side: a terminal table of two or more results, with each one's ratio to the first.

    python -m triode.load_tests compare triode.json vllm.json [--png compare.png]

A ratio is `that / first` for every row: above 1 means more throughput, or longer latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from triode.load_tests.results import LoadResult
from triode.load_tests.stats import Summary


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    value: Callable[[Summary], float]
    fmt: str  # applied to the value


def _ms(get: Callable[[Summary], float]) -> Callable[[Summary], float]:
    return lambda s: get(s) * 1000


ROWS: tuple[Row, ...] = (
    Row("requests ok", lambda s: s.num_ok, "{:.0f}"),
    Row("errors", lambda s: s.num_errors, "{:.0f}"),
    Row("duration (s)", lambda s: s.duration_s, "{:.1f}"),
    Row("output tok/s", lambda s: s.output_tokens_per_s, "{:.1f}"),
    Row("requests/s", lambda s: s.requests_per_s, "{:.2f}"),
    Row("TTFT p50 (ms)", _ms(lambda s: s.ttft.p50), "{:.0f}"),
    Row("TTFT p90 (ms)", _ms(lambda s: s.ttft.p90), "{:.0f}"),
    Row("TTFT p99 (ms)", _ms(lambda s: s.ttft.p99), "{:.0f}"),
    Row("ITL p50 (ms)", _ms(lambda s: s.itl.p50), "{:.1f}"),
    Row("ITL p90 (ms)", _ms(lambda s: s.itl.p90), "{:.1f}"),
    Row("ITL p99 (ms)", _ms(lambda s: s.itl.p99), "{:.1f}"),
    Row("TPOT mean (ms)", _ms(lambda s: s.tpot.mean), "{:.1f}"),
    Row("e2e p50 (s)", lambda s: s.e2e.p50, "{:.2f}"),
    Row("e2e p90 (s)", lambda s: s.e2e.p90, "{:.2f}"),
    Row("e2e p99 (s)", lambda s: s.e2e.p99, "{:.2f}"),
    Row("connects", lambda s: s.connect.count, "{:.0f}"),
    Row("connect p50 (ms)", _ms(lambda s: s.connect.p50), "{:.1f}"),
    Row("connect p99 (ms)", _ms(lambda s: s.connect.p99), "{:.1f}"),
)


def _cell(fmt: str, value: float) -> str:
    return "-" if value is None or math.isnan(value) else fmt.format(value)


def _ratio(value: float, base: float) -> str:
    if any(v is None or math.isnan(v) for v in (value, base)) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def comparison_table(results: Sequence[LoadResult]) -> str:
    """The table as text: one column per result, then one ratio column per later result."""
    if not results:
        return ""
    base = results[0]
    header = ["", *(r.label for r in results)]
    header += [f"{r.label}/{base.label}" for r in results[1:]]
    lines = [header]
    for row in ROWS:
        values = [row.value(r.summary) for r in results]
        cells = [row.label, *(_cell(row.fmt, v) for v in values)]
        cells += [_ratio(v, values[0]) for v in values[1:]]
        lines.append(cells)
    kinds = sorted({k for r in results for k in r.summary.errors_by_kind})
    for kind in kinds:
        counts = [r.summary.errors_by_kind.get(kind, 0) for r in results]
        lines.append([f"  {kind}", *map(str, counts), *([""] * (len(results) - 1))])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]
        rendered.append("  ".join(cells).rstrip())
        if n == 0:
            rendered.append("-" * len(rendered[0]))
    return "\n".join(rendered)


def summary_table(result: LoadResult) -> str:
    """One result on its own."""
    return comparison_table([result])
