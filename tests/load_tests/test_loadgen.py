"""`run`: the warm-up is sent but not measured; the workload is described in the printed
summary, the JSON and the PNG's title; peers get the same workload."""

from __future__ import annotations

import json

import pytest
import trio

from tests.web.helpers import metric
from triode.load_tests.cli import build_parser, main
from triode.load_tests.loadgen import describe_workload, workload_config
from triode.load_tests.server_metrics import scrape

pytestmark = pytest.mark.timeout(120)


def args_of(*argv: str):
    return build_parser().parse_args(["run", *argv])


def test_workload_descriptions():
    closed = {**workload_config(args_of("--transport", "ws", "--concurrency", "8",
                                        "--input-len", "64", "--ignore-eos")),
              "model": "m", "url": "http://h:1"}  # fmt: skip
    assert describe_workload(closed) == (
        "WebSocket /v1/ws (chat) · closed loop, 8 clients · 100 requests (+4 warm-up) · "
        "synthetic prompts of 64 tokens · max_tokens 128 (ignore_eos), temperature 0 · m at http://h:1"
    )
    open_loop = workload_config(args_of("--mode", "open", "--rate", "2.5", "--max-concurrency",
                                        "16", "--endpoint", "completions", "--prompts", "chat",
                                        "--warmup", "0", "--max-tokens", "8:32"))  # fmt: skip
    assert describe_workload(open_loop) == (
        "SSE /v1/completions · open loop, Poisson 2.5 req/s (at most 16 in flight) · "
        "100 requests · bundled chat prompts · max_tokens 8:32, temperature 0"
    )


def test_rates_and_peers_parse():
    args = args_of("--rate", "4,0.5,1", "--peer", "vllm=http://127.0.0.1:8001",
                   "--peer", "http://10.0.0.2:8000")  # fmt: skip
    assert args.rate == (0.5, 1.0, 4.0)
    assert args.peer == [
        ("vllm", "http://127.0.0.1:8001"),
        ("10.0.0.2:8000", "http://10.0.0.2:8000"),
    ]
    for bad in (["--rate", "0,1"], ["--rate", "x"], ["--peer", "a=ftp://x"], ["--slo", "x=1"]):
        with pytest.raises(SystemExit):
            args_of(*bad)


async def test_warmup_is_sent_but_not_measured(load_server, tmp_path, capsys):
    def finished(text: str) -> float:
        return metric(text, "request_success_total")

    before = finished(await scrape(load_server.url))
    argv = ["run", "--url", load_server.url, "--label", "tiny", "--prompts", "chat",
            "--num-requests", "5", "--concurrency", "2", "--max-tokens", "3", "--ignore-eos",
            "--warmup", "3", "--no-progress", "--json", str(tmp_path / "r.json"),
            "--png", str(tmp_path / "r.png")]  # fmt: skip
    assert await trio.to_thread.run_sync(main, argv) == 0
    assert finished(await scrape(load_server.url)) == before + 5 + 3
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["requests"]) == 5 and data["summary"]["num_requests"] == 5
    assert sorted(r["index"] for r in data["requests"]) == [0, 1, 2, 3, 4]
    workload = data["config"]["workload"]
    assert workload.startswith("SSE /v1/chat/completions · closed loop, 2 clients · 5 requests")
    assert "(+3 warm-up)" in workload and f"tiny at {load_server.url}" in workload
    assert f"workload (tiny): {workload}" in capsys.readouterr().out
    assert (tmp_path / "r.png").stat().st_size > 10_000
