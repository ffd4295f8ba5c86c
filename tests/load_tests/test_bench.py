"""The transformers baseline server and the one-command benchmark, as subprocesses."""

from __future__ import annotations

import sys

import httpx
import pytest

from triode.load_tests.bench import run_bench
from triode.load_tests.cli import build_parser
from triode.load_tests.runner import RunConfig, run_workload
from triode.load_tests.servers import ServerCommand, free_port, running_server
from triode.load_tests.transports import open_transports
from triode.load_tests.workload import SamplingOptions, TokenRange, build_specs

pytestmark = pytest.mark.timeout(180)


async def test_hf_server_streams_static_batches(tiny_folder, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "triode.load_tests.hf_server", "--model", str(tiny_folder),
            "--port", str(port), "--max-batch-size", "4", "--num-threads", "1"]  # fmt: skip
    async with running_server(ServerCommand("hf", argv, port), tmp_path) as url:
        specs = build_specs(10, prompt_set="chat", max_tokens=TokenRange(2, 12), seed=5)
        options = SamplingOptions("tiny-llama", ignore_eos=True)
        async with open_transports(["sse"], url, options) as transports:
            run = await run_workload(
                transports, specs, RunConfig(concurrency=6, show_progress=False)
            )
        assert run.summary.num_ok == 10 and run.summary.is_usage_reported
        by_index = {r.index: r for r in run.records}
        assert all(by_index[s.index].output_tokens == s.max_tokens for s in specs)

        async with httpx.AsyncClient(base_url=url) as client:
            body = {"prompt": "Hello", "max_tokens": 5, "ignore_eos": True}
            whole = (await client.post("/v1/completions", json=body)).json()
            assert whole["usage"]["completion_tokens"] == 5 and whole["choices"][0]["text"]
            models = (await client.get("/v1/models")).json()
            assert models["data"][0]["id"] == tiny_folder.name


async def test_bench_runs_triode_and_transformers(tiny_folder, tmp_path, capsys):
    args = build_parser().parse_args([
        "bench", "--servers", "triode,transformers", "--model-dir", str(tiny_folder),
        "--triode-args", f"--model {tiny_folder} --num-kv-blocks 256 --num-threads 1",
        "--hf-args", "--num-threads 1", "--out-dir", str(tmp_path),
        "--prompts", "chat", "--num-requests", "8", "--concurrency", "4", "--max-tokens", "6",
        "--ignore-eos", "--no-progress",
    ])  # fmt: skip
    results = await run_bench(args)
    assert [r.label for r in results] == ["triode", "transformers"]
    for result in results:
        assert result.summary.num_ok == 8 and result.summary.output_tokens == 48
        assert (tmp_path / f"{result.label}.json").exists() and (
            tmp_path / f"{result.label}.log"
        ).exists()
    assert (tmp_path / "compare.png").exists()
    assert "triode / transformers: output tok/s" in capsys.readouterr().out
