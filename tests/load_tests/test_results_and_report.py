"""Result files, the comparison table and the PNG report."""

from __future__ import annotations

from triode.load_tests.compare import comparison_table
from triode.load_tests.record import RequestRecord
from triode.load_tests.report import plot_results
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
