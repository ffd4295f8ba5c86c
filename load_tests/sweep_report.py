"""The sweep's PNG: throughput and latency percentiles against offered load, servers side by side.

Four panels sharing the offered-rate axis: output tokens/s; completed against offered
requests/s (with the line where they are equal); TTFT p50 and p99; ITL p50 and p99. Each server
has one colour (p50 solid, p99 dashed); its knee is a dotted vertical line in that colour and a
ring on every panel. The title says what workload was swept.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from triode.load_tests.report import size_axis_to
from triode.load_tests.stats import Summary
from triode.load_tests.sweep import ServerSweep, SweepPoint

Getter = Callable[[SweepPoint], float]


def _ms(get: Callable[[Summary], float]) -> Getter:
    return lambda p: get(p.summary) * 1000


PANELS: tuple[tuple[str, str, tuple[tuple[str, Getter], ...]], ...] = (
    ("Output tokens/s", "tokens/s", (("", lambda p: p.summary.output_tokens_per_s),)),
    ("Completed requests/s", "requests/s", (("", lambda p: p.completion_rps),)),
    (
        "Time to first token",
        "ms",
        (("p50", _ms(lambda s: s.ttft.p50)), ("p99", _ms(lambda s: s.ttft.p99))),
    ),
    (
        "Inter-token latency",
        "ms",
        (("p50", _ms(lambda s: s.itl.p50)), ("p99", _ms(lambda s: s.itl.p99))),
    ),
)
_STYLES = {"": "-", "p50": "-", "p99": "--"}


def plot_sweep(sweeps: Sequence[ServerSweep], path: str | Path, workload: str = "") -> Path:
    """Write the sweep's panels for every server to `path` (PNG); returns the path."""
    fig = sweep_figure(sweeps, workload)
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def sweep_figure(sweeps: Sequence[ServerSweep], workload: str = "") -> Figure:
    """The sweep's figure (the caller saves and closes it)."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_rates = [p.rate for s in sweeps for p in s.points]
    for ax, (title, unit, lines) in zip(axes.flat, PANELS):
        values: list[float] = []
        for i, sweep in enumerate(sweeps):
            colour = colours[i % len(colours)]
            rates = [p.rate for p in sweep.points]
            for name, get in lines:
                ys = [get(p) for p in sweep.points]
                values += [y for y in ys if math.isfinite(y)]
                label = f"{sweep.label} {name}".strip()
                ax.plot(rates, ys, _STYLES[name], marker="o", ms=4, color=colour, label=label)
            _mark_knee(ax, sweep, lines, colour)
        if title.startswith("Completed") and all_rates:
            ends = [min(all_rates), max(all_rates)]
            ax.plot(ends, ends, ":", color="grey", lw=1, label="completed = offered")
            values += ends
        ax.set_title(f"{title} vs offered load")
        ax.set_xlabel("offered load (requests/s, Poisson)")
        ax.set_ylabel(unit)
        _rate_axis(ax, all_rates)
        size_axis_to(ax, values, axis="y", from_zero=unit != "ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    names = " vs ".join(s.label for s in sweeps)
    knees = "; ".join(_knee_text(s) for s in sweeps)
    title = f"Rate sweep: {names}. {knees}"
    if workload:
        title += "\n" + "\n".join(textwrap.wrap(workload, 150))
    fig.suptitle(title, fontsize="medium")
    return fig


def _mark_knee(
    ax: Axes, sweep: ServerSweep, lines: tuple[tuple[str, Getter], ...], colour: str
) -> None:
    knee = sweep.knee
    if knee is None:
        return
    ax.axvline(knee.rate, color=colour, ls=":", lw=1.5)
    for _, get in lines:
        y = get(knee)
        if math.isfinite(y):
            ax.plot([knee.rate], [y], "o", ms=11, mfc="none", mec=colour, mew=2)


def _knee_text(sweep: ServerSweep) -> str:
    knee = sweep.knee
    if knee is None:
        return f"{sweep.label}: behind at every rate"
    bound = "" if sweep.is_knee_bounded else ">= "
    return f"{sweep.label} knee {bound}{knee.rate:g} req/s"


def _rate_axis(ax: Axes, rates: Sequence[float]) -> None:
    """Logarithmic when the rates span a factor of 4 or more (a geometric sweep)."""
    if not rates:
        return
    low, high = min(rates), max(rates)
    if high / low >= 4:
        ax.set_xscale("log", base=2)
        ax.set_xlim(low / 1.15, high * 1.15)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        margin = (high - low) * 0.05 or low * 0.1
        ax.set_xlim(low - margin, high + margin)
