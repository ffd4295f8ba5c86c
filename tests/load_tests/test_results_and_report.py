"""Result files, the comparison table and the PNG report."""

from __future__ import annotations

import matplotlib.pyplot as plt

from triode.load_tests.compare import comparison_table
from triode.load_tests.record import RequestRecord
from triode.load_tests.report import plot_results, results_figure, size_axis_to
from triode.load_tests.results import LoadResult, load_result, save_result
from triode.load_tests.stats import summarize


def result(label: str, scale: float) -> LoadResult:
    records = [
        RequestRecord(
            i,
            "ws",
            i / 10,
            chunk_times=[round(scale * (0.2 + 0.05 * k), 6) for k in range(8)],  # µs, as saved
            e2e=scale * 0.6,
            output_tokens=8,
            prompt_tokens=12,
            is_usage_reported=True,
        )
        for i in range(20)
    ]
    records.append(RequestRecord(20, "ws", 0.0, error="http_503", error_detail="busy"))
    return LoadResult(label, summarize(records, duration_s=2.0 * scale), records, {"k": 1})


def test_json_roundtrip(tmp_path):
    original = result("a", 1.0)
    save_result(original, tmp_path / "a.json")
    loaded = load_result(tmp_path / "a.json")
    assert loaded.label == "a" and loaded.config == {"k": 1}
    assert loaded.records == original.records
    assert loaded.summary == summarize(loaded.records, 2.0)


def test_comparison_table_has_values_and_ratios():
    table = comparison_table([result("triode", 1.0), result("peer", 2.0)])
    lines = table.splitlines()
    assert lines[0].split() == ["triode", "peer", "peer/triode"]
    rows = {line[:16].strip(): line[16:].split() for line in lines[2:]}
    assert rows["requests ok"] == ["20", "20", "1.00x"]
    assert rows["output tok/s"] == ["80.0", "40.0", "0.50x"]
    assert rows["TTFT p50 (ms)"] == ["200", "400", "2.00x"]
    assert rows["ITL p50 (ms)"] == ["50.0", "100.0", "2.00x"]
    assert rows["http_503"] == ["1", "1"]


def test_png_report(tmp_path):
    path = plot_results([result("triode", 1.0), result("peer", 2.0)], tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_latency_axes_span_the_data_and_the_title_names_the_workload():
    fast, slow = result("triode", 1.0), result("peer", 2.0)
    fast.config["workload"] = slow.config["workload"] = "SSE /v1/completions · closed loop, 4"
    fig = results_figure([fast, slow])
    try:
        ttft_ax, itl_ax, e2e_ax, _ = fig.axes
        # TTFT: 200 ms (fast) to 400 ms (slow); the axis spans that, not 0 to 400.
        low, high = ttft_ax.get_xlim()
        assert 180 <= low < 200 and 400 < high <= 420, (low, high)
        low, high = itl_ax.get_xlim()  # every gap is 50 or 100 ms
        assert 40 <= low < 50 and 100 < high <= 110 and itl_ax.get_xscale() == "linear"
        assert e2e_ax.get_xlim()[0] > 0.5
        assert "SSE /v1/completions · closed loop, 4" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_a_latency_axis_spanning_decades_is_logarithmic():
    fig, ax = plt.subplots()
    try:
        size_axis_to(ax, [0.0, 2.0, 5.0, 3000.0])  # a 3 s stall beside gaps of milliseconds
        assert ax.get_xscale() == "log"
        low, high = ax.get_xlim()
        assert 1.0 < low < 2.0 and 3000 < high < 4000
        size_axis_to(ax, [1.0, 3.0], axis="y", from_zero=True)
        assert ax.get_ylim()[0] == 0 and 3 < ax.get_ylim()[1] < 3.3
    finally:
        plt.close(fig)
