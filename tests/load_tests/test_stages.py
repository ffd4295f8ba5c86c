"""k6-style stages: parsing, the VU schedule, per-stage grouping, and connection storms against
a real server whose WebSocket limit some stages exceed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from tests.web.conftest import running_server, tiny_engine_config
from triode.load_tests.cli import main
from triode.load_tests.record import RequestRecord
from triode.load_tests.stages import Stage, parse_stages, stage_reports, vu_changes
from triode.web.server import RunningServer
from triode.web.state import ServerConfig

pytestmark = pytest.mark.timeout(120)

WS_LIMIT = 4


def test_parse_stages():
    assert parse_stages("30s:100, 1m:1000,500ms:0,2:5") == (
        Stage(30, 100), Stage(60, 1000), Stage(0.5, 0), Stage(2, 5)
    )  # fmt: skip
    for bad in ("30s", "30x:5", "s:5", "10s:-1", ""):
        with pytest.raises(ValueError):
            parse_stages(bad)


def test_vu_changes_ramp_linearly():
    changes = vu_changes(parse_stages("10s:5,0s:7,10s:7,4s:3"))
    ups = [t for t, c in changes if c > 0]
    downs = [t for t, c in changes if c < 0]
    assert ups == [0, 2, 4, 6, 8, 10, 10]  # one VU every 2 s, then two at once
    assert downs == [20, 21, 22, 23]  # the hold changes nothing; then one every second
    assert changes == sorted(changes, key=lambda c: c[0])


def test_stage_reports_group_requests_by_send_time():
    def record(start: float, *, error: str | None = None, connect: float = 0.01):
        return RequestRecord(0, "ws", start, [0.1], e2e=0.2 if error is None else None,
                             output_tokens=1, error=error, connect_s=connect)  # fmt: skip

    records = [record(0.1), record(0.9, connect=0.05), record(1.2, error="http_503"),
               record(1.5), record(2.4)]  # fmt: skip
    vus = [(0.0, 0), (0.0, 1), (0.5, 2), (1.0, 3), (1.5, 1), (2.0, 0)]
    first, second = stage_reports(parse_stages("1s:2,1s:0"), records, vus)
    assert (first.num_requests, first.num_ok, first.num_errors, first.peak_vus) == (2, 2, 0, 2)
    assert first.connect.max == pytest.approx(0.05) and first.ttft.count == 2
    # The request sent after the last stage's end (2.4 s) counts in the last stage.
    assert (second.num_requests, second.num_errors, second.errors_by_kind) == (
        3, 1, {"http_503": 1}
    )  # fmt: skip
    assert (second.from_vus, second.to_vus, second.peak_vus) == (2, 0, 3)
    assert second.connect.count == 3 and second.ttft.count == 2  # failed: no TTFT
    assert json.loads(json.dumps(second.to_json()))["connect"]["count"] == 3


@pytest.fixture(scope="module")
def limited_server(tiny_folder) -> Iterator[RunningServer]:
    """The tiny model behind a server that accepts at most WS_LIMIT WebSockets at once."""
    config = ServerConfig(port=0, max_ws_connections=WS_LIMIT, shutdown_timeout_s=5.0)
    yield from running_server(tiny_engine_config(tiny_folder, num_kv_blocks=128), config)


async def run_cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


COMMON = ("--prompts", "chat", "--max-tokens", "16", "--ignore-eos", "--warmup", "1",
          "--no-progress")  # fmt: skip


async def test_websocket_storm_reports_each_stages_errors(limited_server, tmp_path, capsys):
    # Stage 1 stays under the server's WebSocket limit; stage 3 holds well over it.
    status = await run_cli(
        "run", "--url", limited_server.url, "--transport", "ws", *COMMON,
        "--stages", f"0.5s:{WS_LIMIT - 1},0.2s:10,0.6s:10,0.2s:0",
        "--json", str(tmp_path / "storm.json"), "--png", str(tmp_path / "storm.png"),
    )  # fmt: skip
    assert status == 1  # some requests failed
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "storm.json").read_text())
    assert (tmp_path / "storm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stages = data["summary"]["extra"]["stages"]
    assert [(s["from_vus"], s["to_vus"]) for s in stages] == [(0, 3), (3, 10), (10, 10), (10, 0)]
    assert stages[0]["num_errors"] == 0 and stages[0]["num_ok"] > 0
    assert stages[2]["peak_vus"] == 10 and stages[2]["errors_by_kind"].get("http_503", 0) > 0
    assert set(stages[2]["errors_by_kind"]) == {"http_503"}
    # Every request that got a socket opened its own, so each has a connect time; a refused
    # handshake opened nothing.
    ok = [r for r in data["requests"] if r["error"] is None]
    assert ok and all(r["connect_s"] is not None and r["connect_s"] > 0 for r in ok)
    assert stages[0]["connect"]["count"] == stages[0]["num_requests"]
    assert "stages 0.5s:3,0.2s:10,0.6s:10,0.2s:0" in data["config"]["workload"]
    assert "connect p50/p90/p99/max (ms)" in out and "http_503: " in out


async def test_sse_stages_measure_tcp_connects(load_server, capsys):
    status = await run_cli(
        "run", "--url", load_server.url, "--transport", "sse", *COMMON,
        "--stages", "0.4s:4,0.3s:0", "--slo", "connect_p99=1s",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ok   connect_p99 = " in out and "ok   errors = 0" in out
