"""Rate sweeps: the knee rule on hand-made runs, the JSON round trip, and `run --sweep` against
two real servers (the tiny model; the peer serves one request at a time, so it saturates)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import matplotlib.pyplot as plt
import pytest
import trio

from tests.web.conftest import running_server, tiny_engine_config
from triode.load_tests.cli import main
from triode.load_tests.record import RequestRecord
from triode.load_tests.runner import RunResult
from triode.load_tests.slo import parse_slo
from triode.load_tests.stats import summarize
from triode.load_tests.sweep import (
    ServerSweep,
    auto_rates,
    load_sweep,
    save_sweep,
    sweep_point,
)
from triode.load_tests.sweep_report import sweep_figure
from triode.web.server import RunningServer
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(180)


def run_at(rate: float, service_s: float, n: int = 20, ttft: float = 0.05) -> RunResult:
    """A run of `n` requests sent every 1/rate s to a server that finishes one every
    `service_s` s (or as they come, when that is faster)."""
    records, free_at = [], 0.0
    for i in range(n):
        start = i / rate
        end = max(start + ttft + 0.01, free_at + service_s)
        free_at = end
        chunks = [end - start - 0.01, end - start - 0.005]
        records.append(RequestRecord(i, "sse", start, chunks, e2e=end - start, output_tokens=2))
    duration = max(r.start + r.e2e for r in records)
    return RunResult(records, duration, summarize(records, duration))


def sweep_of(rates: list[float], service_s: float, slo=None) -> ServerSweep:
    sweep = ServerSweep("s", "http://x", "m")
    sweep.points = [sweep_point(r, run_at(r, service_s), slo) for r in rates]
    return sweep


def test_knee_is_the_last_rate_kept_up():
    sweep = sweep_of([1, 2, 4, 8, 16], service_s=0.2)  # capacity: 5 requests/s
    assert [p.keeps_up for p in sweep.points] == [True, True, True, False, False]
    assert sweep.knee.rate == 4 and sweep.is_knee_bounded
    assert sweep.points[3].completion_rps == pytest.approx(5.0, rel=0.01)
    assert sweep.points[0].arrival_rps == pytest.approx(1.0)


def test_knee_unbounded_or_absent():
    fast = sweep_of([1, 2], service_s=0.01)
    assert fast.knee.rate == 2 and not fast.is_knee_bounded
    slow = sweep_of([10, 20], service_s=0.5)
    assert slow.knee is None and not slow.is_knee_bounded
    failed = ServerSweep("f", "u", "m")
    run = run_at(1, 0.01)
    run.records[0].error = "http_503"
    failed.points = [sweep_point(1, RunResult(run.records, 1, summarize(run.records, 1)), None)]
    assert not failed.points[0].keeps_up  # an error is not keeping up


def test_max_rate_within_slo():
    sweep = sweep_of([1, 2, 4, 8], service_s=0.2, slo=parse_slo("ttft_p99=500ms"))
    assert [p.meets_slo for p in sweep.points] == [True, True, True, False]
    assert sweep.max_rate_within_slo == 4
    assert sweep.points[-1].slo_failures[0].startswith("FAIL ttft_p99 = ")
    assert sweep_of([1], 0.2).max_rate_within_slo is None


def test_auto_rates_bracket_the_saturation():
    rates = auto_rates(10.0, 6)
    assert rates[0] == 1.25 and rates[-1] == 20.0 and len(rates) == 6
    ratios = [b / a for a, b in itertools.pairwise(rates)]
    assert max(ratios) == pytest.approx(min(ratios), rel=0.02)  # geometric
    with pytest.raises(ValueError, match="no requests"):
        auto_rates(0.0)


def test_sweep_json_roundtrip(tmp_path):
    sweep = sweep_of([1, 2, 4, 8], service_s=0.2, slo=parse_slo("ttft_p99=500ms"))
    save_sweep([sweep], {"workload": "w"}, parse_slo("ttft_p99=500ms"), tmp_path / "s.json")
    [back], data = load_sweep(tmp_path / "s.json")
    assert data["workload"] == "w" and data["slo"] == "ttft_p99=500ms,errors=0"
    assert data["servers"][0]["knee_rate"] == 4 and data["servers"][0]["is_knee_bounded"]
    assert back.knee.rate == 4 and back.max_rate_within_slo == 4
    assert [p.summary for p in back.points] == [p.summary for p in sweep.points]
    # `report` redraws a sweep's JSON as a sweep.
    assert main(["report", str(tmp_path / "s.json"), "--png", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def serial_server(tiny_folder) -> Iterator[RunningServer]:
    """A second OpenAI-compatible server: the tiny model, one request at a time."""
    config = tiny_engine_config(tiny_folder, max_num_seqs=1, served_model_name="tiny-serial")
    yield from running_server(config, ServerConfig(port=0, shutdown_timeout_s=5.0))


async def test_sweep_two_servers_one_png_one_json(load_server, serial_server, tmp_path, capsys):
    argv = ["run", "--url", load_server.url, "--label", "triode",
            "--peer", f"serial={serial_server.url}", "--sweep", "--sweep-points", "3",
            "--prompts", "chat", "--num-requests", "12", "--concurrency", "2",
            "--max-tokens", "8", "--ignore-eos", "--warmup", "2", "--no-progress",
            "--slo", "e2e_p50=10s", "--json", str(tmp_path / "sweep.json"),
            "--png", str(tmp_path / "sweep.png")]  # fmt: skip
    assert await trio.to_thread.run_sync(main, argv) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json", "sweep.png"]
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [s["label"] for s in data["servers"]] == ["triode", "serial"]
    assert data["servers"][1]["model"] == "tiny-serial"
    assert "open loop, Poisson at each offered rate" in data["workload"]
    assert "12 requests per rate (+2 warm-up)" in data["workload"]
    for server in data["servers"]:
        points = server["points"]
        assert len(points) == 3 and server["saturation_rps"] > 0
        assert [p["rate"] for p in points] == sorted(p["rate"] for p in points)
        assert all(p["summary"]["num_ok"] == 12 for p in points)
        assert server["knee_rate"] in [None, *(p["rate"] for p in points)]
        assert server["max_rate_within_slo"] == points[-1]["rate"]
        assert f"{server['label']}: " in out
    # One request at a time cannot keep up with twice its own closed-loop rate.
    serial = data["servers"][1]
    assert not serial["points"][-1]["keeps_up"]
    assert serial["knee_rate"] is None or serial["is_knee_bounded"]
    assert "serial @ " in out and "FALLS BEHIND" in out


def test_the_knee_is_marked_on_every_panel():
    fast, slow = sweep_of([1, 2, 4, 8], service_s=0.1), sweep_of([1, 2, 4, 8], service_s=0.4)
    fast.label, slow.label = "fast", "slow"
    fig = sweep_figure([fast, slow], "the workload")
    try:
        assert fast.knee.rate == 8 and slow.knee.rate == 2
        for ax in fig.axes:
            verticals = {
                line.get_xdata()[0]
                for line in ax.get_lines()
                if line.get_linestyle() == ":" and len(set(line.get_xdata())) == 1
            }
            assert verticals == {8, 2}, ax.get_title()
        title = fig._suptitle.get_text()
        assert "fast knee >= 8 req/s" in title and "slow knee 2 req/s" in title
        assert "the workload" in title
    finally:
        plt.close(fig)
