"""The PNG of a `--stages` run: VUs over time, and each new connection's connect time.

Top: the VUs running (a step line) with the stages' boundaries. Bottom: one dot per request at
the time it was sent and the time its connection took to open (ok in the run's colour, failed
requests as red crosses at their send time along the top edge). The title says the workload.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt

from triode.load_tests.report import size_axis_to
from triode.load_tests.results import LoadResult


def plot_stages(result: LoadResult, path: str | Path) -> Path:
    """Write the stages plot of `result` (a run with --stages) to `path`; returns the path."""
    stages = result.summary.extra.get("stages")
    vus = result.summary.extra.get("vus")
    if not stages or vus is None:
        raise ValueError(f"{result.label}: not a --stages run")
    fig, (vu_ax, connect_ax) = plt.subplots(
        2, 1, figsize=(12, 7.5), sharex=True, constrained_layout=True
    )
    times, counts = zip(*vus)
    vu_ax.step(times, counts, where="post", label="VUs running")
    vu_ax.set_ylabel("virtual users")
    vu_ax.set_title(
        "Virtual users (each sends requests one after another, new connection each)", pad=16
    )
    for ax in (vu_ax, connect_ax):
        for stage in stages:
            ax.axvline(stage["end_s"], color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    for stage in stages:
        middle = (stage["start_s"] + stage["end_s"]) / 2
        vu_ax.annotate(
            f"stage {stage['index']}: {stage['num_errors']} errors",
            (middle, 1.0),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize="small",
        )
    ok = [r for r in result.records if r.connect_s is not None and r.error is None]
    failed = [r for r in result.records if r.error is not None]
    connect_ms = [r.connect_s * 1000 for r in ok if r.connect_s is not None]
    connect_ax.plot([r.start for r in ok], connect_ms, ".", ms=3, label="connect time")
    size_axis_to(connect_ax, connect_ms, axis="y")
    if failed:
        top = connect_ax.get_ylim()[1]
        connect_ax.plot(
            [r.start for r in failed], [top] * len(failed), "x", color="red", label="failed request"
        )
    connect_ax.set_ylabel("ms")
    connect_ax.set_xlabel("s since the run started")
    connect_ax.set_title("Connect time of each request's connection")
    for ax in (vu_ax, connect_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left")
    workload = result.config.get("workload", "")
    fig.suptitle("\n".join([result.label, *textwrap.wrap(workload, 150)]), fontsize="medium")
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
