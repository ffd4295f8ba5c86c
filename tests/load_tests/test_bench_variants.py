"""bench's --variant (another triode configuration in the same run) and --busy (the same
workload again beside busy processes, busy/idle printed)."""

from __future__ import annotations

import os

import pytest
import trio

from triode.load_tests.bench import busy_processes, run_bench, server_command
from triode.load_tests.cli import build_parser

pytestmark = pytest.mark.timeout(180)


def _yes_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == b"yes\0":
                        pids.add(int(entry))
            except OSError:
                pass
    return pids


async def test_busy_processes_run_for_the_block_only():
    before = _yes_pids()
    async with busy_processes(2):
        await trio.sleep(0.1)
        during = _yes_pids() - before
        assert len(during) == 2
    assert not (_yes_pids() & during)  # killed and reaped


def test_a_variant_is_triode_with_its_flags():
    args = build_parser().parse_args([
        "bench", "--servers", "triode,thread", "--triode-args", "--num-threads 1",
        "--variant", "thread=--no-engine-process --max-num-seqs 8",
    ])  # fmt: skip
    command = server_command("thread", args)
    assert command.name == "thread" and command.argv[command.argv.index("serve") + 1] == "--port"
    assert command.argv[-5:] == ["--num-threads", "1", "--no-engine-process", "--max-num-seqs", "8"]
    with pytest.raises(ValueError, match="unknown server"):
        server_command("nope", args)


async def test_bench_runs_a_variant_idle_and_busy(tiny_folder, tmp_path, capsys):
    args = build_parser().parse_args([
        "bench", "--servers", "thread", "--variant", "thread=--no-engine-process",
        "--triode-args", f"--model {tiny_folder} --num-kv-blocks 256 --num-threads 1",
        "--busy", "1", "--out-dir", str(tmp_path), "--prompts", "chat", "--num-requests", "4",
        "--concurrency", "2", "--max-tokens", "4", "--ignore-eos", "--no-progress",
    ])  # fmt: skip
    results = await run_bench(args)
    assert [r.label for r in results] == ["thread", "thread+busy"]
    assert all(r.summary.num_ok == 4 and r.summary.output_tokens == 16 for r in results)
    assert [r.config["busy_processes"] for r in results] == [0, 1]
    assert (tmp_path / "thread+busy.json").exists()
    assert "thread: beside 1 busy process(es)" in capsys.readouterr().out
