"""PNG reports: latency CDFs (TTFT, ITL, e2e) and output tokens/s over time, one line per run.

One run gives one line per panel; several runs (a comparison) are overlaid in the same panels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt

from triode.load_tests.results import LoadResult
from triode.load_tests.stats import cdf, token_timeline


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def plot_results(results: Sequence[LoadResult], path: str | Path, bin_s: float = 1.0) -> Path:
    """Write the four panels for `results` to `path` (PNG); returns the path."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    (ttft_ax, itl_ax), (e2e_ax, rate_ax) = axes
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
    # Stalls of seconds beside gaps of milliseconds (and 0 for chunks read together): linear
    # up to 1 ms, logarithmic beyond.
    itl_ax.set_xscale("symlog", linthresh=1.0)
    itl_ax.set_xlim(left=0)
    rate_ax.set_title(f"Output tokens/s over time ({bin_s:g} s bins)")
    rate_ax.set_xlabel("s since the run started")
    rate_ax.set_ylabel("tokens/s")
    rate_ax.grid(alpha=0.3)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(", ".join(r.label for r in results))
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
