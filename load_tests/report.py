"""PNG reports: latency CDFs (TTFT, ITL, e2e) and output tokens/s over time, one line per run.

One run gives one line per panel; several runs (a comparison) are overlaid in the same panels.
The title says what workload was measured; each latency axis spans the data it shows (linear,
or logarithmic when the values span more than `LOG_SPAN` times, e.g. stalls beside gaps).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from triode.load_tests.results import LoadResult
from triode.load_tests.stats import cdf, token_timeline

LOG_SPAN = 50.0


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def size_axis_to(
    ax: Axes, values: Sequence[float], axis: Literal["x", "y"] = "x", *, from_zero: bool = False
) -> None:
    """Fit one axis to `values` with a small margin: linear, or logarithmic when the positive
    values span more than LOG_SPAN times (from_zero: linear from 0, for rates and counts)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    set_scale, set_lim = (
        (ax.set_xscale, ax.set_xlim) if axis == "x" else (ax.set_yscale, ax.set_ylim)
    )
    low, high = min(finite), max(finite)
    positive = [v for v in finite if v > 0]
    if not from_zero and positive and max(positive) / min(positive) > LOG_SPAN:
        set_scale("log")
        set_lim(min(positive) / 1.2, max(positive) * 1.2)
        return
    if from_zero:
        low = min(low, 0.0)
    margin = (high - low) * 0.05 or abs(high) * 0.1 or 1.0
    set_lim(low if from_zero else low - margin, high + margin)


def plot_results(results: Sequence[LoadResult], path: str | Path, bin_s: float = 1.0) -> Path:
    """Write the four panels for `results` to `path` (PNG); returns the path."""
    fig = results_figure(results, bin_s)
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def results_figure(results: Sequence[LoadResult], bin_s: float = 1.0) -> Figure:
    """The four panels (the caller saves and closes the figure)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    (ttft_ax, itl_ax), (e2e_ax, rate_ax) = axes
    shown: dict[Axes, list[float]] = {ttft_ax: [], itl_ax: [], e2e_ax: []}
    for result in results:
        ok = [r for r in result.records if r.is_ok]
        label = result.label
        panels = (
            (ttft_ax, _ms([r.ttft for r in ok if r.ttft is not None])),
            (itl_ax, _ms([gap for r in ok for gap in r.itls])),
            (e2e_ax, [r.e2e for r in ok if r.e2e is not None]),
        )
        for ax, values in panels:
            if values:
                xs, ys = cdf(values)
                ax.step(xs, ys, where="post", label=label)
                shown[ax].extend(values)
        times, rates = token_timeline(result.records, bin_s)
        rate_ax.plot(times, rates, label=label)
    titles = (
        (ttft_ax, "Time to first token", "ms"),
        (itl_ax, "Inter-token latency", "ms"),
        (e2e_ax, "End-to-end latency", "s"),
    )
    for ax, title, unit in titles:
        ax.set_title(f"{title} (CDF)")
        ax.set_xlabel(unit)
        ax.set_ylabel("fraction of requests" if ax is not itl_ax else "fraction of gaps")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        size_axis_to(ax, shown[ax])
    rate_ax.set_title(f"Output tokens/s over time ({bin_s:g} s bins)")
    rate_ax.set_xlabel("s since the run started")
    rate_ax.set_ylabel("tokens/s")
    rate_ax.grid(alpha=0.3)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(_title(results), fontsize="medium")
    return fig


def _title(results: Sequence[LoadResult]) -> str:
    """The runs' labels, then the workload each measured (once if they share it)."""
    workloads = [r.config.get("workload", "") for r in results]
    lines = [", ".join(r.label for r in results)]
    if len(set(workloads)) == 1:
        lines += textwrap.wrap(workloads[0], 150)
    else:
        for result, workload in zip(results, workloads):
            lines += textwrap.wrap(f"{result.label}: {workload}", 150)
    return "\n".join(line for line in lines if line)
