"""`python -m triode.load_tests COMMAND`: run, compare, report, soak, bench, hf-server.

    python -m triode.load_tests run --url http://127.0.0.1:8000 --transport ws --concurrency 64 \\
        --num-requests 500 --max-tokens 32 --json triode.json --png triode.png
    python -m triode.load_tests run --url http://127.0.0.1:8001 --label vllm --json vllm.json
    python -m triode.load_tests run --url http://127.0.0.1:8000 --label triode \\
        --peer vllm=http://127.0.0.1:8001 --sweep --json sweep.json --png sweep.png
    python -m triode.load_tests run --url http://127.0.0.1:8000 --slo ttft_p99=800ms,itl_p99=200ms
    python -m triode.load_tests run --url http://127.0.0.1:8000 --transport ws \\
        --stages 30s:100,60s:1000,30s:0 --max-tokens 8 --png storm.png
    python -m triode.load_tests compare triode.json vllm.json --png compare.png
    python -m triode.load_tests soak --url http://127.0.0.1:8000 --waves 6 --wave-size 400
    python -m triode.load_tests bench --servers triode,transformers --ignore-eos
    python -m triode.load_tests hf-server --port 8001          # the transformers baseline server
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from triode.host import raise_open_file_limit
from triode.load_tests import slo, stages
from triode.load_tests.slo import KNOWN_FIGURES
from triode.load_tests.sweep import DEFAULT_SWEEP_POINTS
from triode.load_tests.workload import TokenRange


def parse_peer(text: str) -> tuple[str, str]:
    """'vllm=http://127.0.0.1:8001' (or a bare URL, labelled by its host and port)."""
    label, sep, url = text.partition("=")
    if not sep:
        label, url = text.split("://")[-1].rstrip("/"), text
    if not url.startswith(("http://", "https://")) or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=http://host:port, got {text!r}")
    return label, url


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser's ValueError as argparse's usage error."""

    def parse_argument(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse_argument


parse_slo = _argument_type(slo.parse_slo)
parse_stages = _argument_type(stages.parse_stages)


def build_parser() -> argparse.ArgumentParser:
    from triode.load_tests.bench import add_bench_args
    from triode.load_tests.loadgen import add_workload_args

    parser = argparse.ArgumentParser(
        prog="python -m triode.load_tests", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="load a server (and peers); print the summary; sweeps, SLOs, stages"
    )
    run.add_argument("--url", default="http://127.0.0.1:8000")
    run.add_argument("--label", default=None, help="the run's name in tables and plots")
    run.add_argument(
        "--peer",
        type=parse_peer,
        action="append",
        default=[],
        metavar="LABEL=URL",
        help="another OpenAI-compatible server to run the same workload against, after --url "
        "(repeatable); the results are compared side by side",
    )
    run.add_argument("--json", type=Path, default=None, help="write the result here")
    run.add_argument("--png", type=Path, default=None, help="write the plots here")
    add_workload_args(run)
    shape = run.add_argument_group("sweeps, SLOs and stages")
    shape.add_argument(
        "--sweep",
        action="store_true",
        help="rate sweep with automatic rates: probe each server's saturation (closed loop at "
        "--concurrency), then --sweep-points open-loop rates around it; finds the knee",
    )
    shape.add_argument("--sweep-points", type=int, default=DEFAULT_SWEEP_POINTS)
    shape.add_argument(
        "--slo",
        type=parse_slo,
        default=None,
        metavar="NAME=VALUE,...",
        help="pass/fail thresholds, e.g. ttft_p99=800ms,itl_p99=200ms,errors=0: exit 1 when "
        f"one is missed (figures: {KNOWN_FIGURES})",
    )
    shape.add_argument(
        "--stages",
        type=parse_stages,
        default=None,
        metavar="DURATION:VUS,...",
        help="k6-style ramped virtual users, e.g. 30s:100,60s:1000,30s:0; each request opens "
        "its own connection; reports connect times and errors per stage",
    )

    compare = commands.add_parser("compare", help="two or more JSON results side by side")
    compare.add_argument("results", nargs="+", type=Path)
    compare.add_argument("--png", type=Path, default=None, help="a combined plot")

    report = commands.add_parser(
        "report", help="plot JSON results (one line per result), or redraw a sweep's JSON"
    )
    report.add_argument("results", nargs="+", type=Path)
    report.add_argument("--png", type=Path, required=True)

    soak = commands.add_parser("soak", help="waves of connections, disconnects, slow readers; "
                               "then check /metrics for leaks (exit 1 on a leak)")  # fmt: skip
    soak.add_argument("--url", default="http://127.0.0.1:8000")
    soak.add_argument("--model", default=None)
    soak.add_argument("--api-key", default=None)
    soak.add_argument("--waves", type=int, default=6)
    soak.add_argument("--wave-size", type=int, default=400)
    soak.add_argument("--wave-interval", type=float, default=15.0, help="seconds between waves")
    soak.add_argument("--disconnect-fraction", type=float, default=0.2)
    soak.add_argument("--early-disconnect-fraction", type=float, default=0.1)
    soak.add_argument("--slow-fraction", type=float, default=0.2)
    soak.add_argument("--slow-pause", type=float, default=3.0, help="seconds not reading")
    soak.add_argument("--max-tokens", type=TokenRange.parse, default=TokenRange(4, 32))
    soak.add_argument("--transports", default="sse,ws")
    soak.add_argument("--grace", type=float, default=10.0, help="seconds for aborts to land")
    soak.add_argument("--max-errors", type=int, default=0, help="errors tolerated (exit 1 above)")
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument("--json", type=Path, default=None)
    soak.add_argument("--no-progress", action="store_true")

    bench = commands.add_parser("bench", help="triode vs transformers (and vLLM), one command")
    bench.add_argument("--label", default=None, help=argparse.SUPPRESS)
    add_bench_args(bench)
    add_workload_args(bench)

    commands.add_parser("hf-server", help="the transformers baseline server (flags: --help)",
                        add_help=False)  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fuzz"]:  # hostile requests against a running server (load_tests/fuzz.py)
        from triode.load_tests.fuzz import main as fuzz_main

        return fuzz_main(argv[1:])
    if argv[:1] == ["hf-server"]:
        from triode.load_tests.hf_server import main as hf_main

        return hf_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise_open_file_limit()
    return trio.run(_COMMANDS[args.command], args)


async def _run(args: argparse.Namespace) -> int:
    targets = [(args.label or args.transport, args.url), *args.peer]
    labels = [label for label, _ in targets]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"error: the servers need different labels, got {labels}")
    if args.sweep or len(args.rate) > 1:
        if args.stages:
            raise SystemExit("error: --stages and a rate sweep are different runs; pick one")
        from triode.load_tests.run_command import run_sweep

        return await run_sweep(args, targets)
    from triode.load_tests.run_command import run_and_report

    return await run_and_report(args, targets)


async def _compare(args: argparse.Namespace) -> int:
    from triode.load_tests.compare import comparison_table
    from triode.load_tests.results import load_result

    results = [load_result(p) for p in args.results]
    print(comparison_table(results))
    if args.png:
        from triode.load_tests.report import plot_results

        plot_results(results, args.png)
    return 0


async def _report(args: argparse.Namespace) -> int:
    import orjson

    from triode.load_tests.report import plot_results
    from triode.load_tests.results import load_result
    from triode.load_tests.sweep import load_sweep
    from triode.load_tests.sweep_report import plot_sweep

    if len(args.results) == 1 and orjson.loads(args.results[0].read_bytes()).get("kind") == "sweep":
        sweeps, data = load_sweep(args.results[0])  # a sweep redraws as a sweep
        plot_sweep(sweeps, args.png, data.get("workload", ""))
        return 0
    plot_results([load_result(p) for p in args.results], args.png)
    return 0


async def _soak(args: argparse.Namespace) -> int:
    from triode.load_tests.compare import comparison_table
    from triode.load_tests.results import LoadResult, save_result
    from triode.load_tests.servers import discover_model
    from triode.load_tests.soak import SoakConfig, run_soak

    config = SoakConfig(
        url=args.url,
        model=args.model or await discover_model(args.url, args.api_key),
        num_waves=args.waves,
        wave_size=args.wave_size,
        wave_interval_s=args.wave_interval,
        disconnect_fraction=args.disconnect_fraction,
        early_disconnect_fraction=args.early_disconnect_fraction,
        slow_fraction=args.slow_fraction,
        slow_pause_s=args.slow_pause,
        max_tokens=args.max_tokens,
        transports=tuple(t.strip() for t in args.transports.split(",") if t.strip()),
        seed=args.seed,
        grace_s=args.grace,
        api_key=args.api_key,
        show_progress=not args.no_progress,
    )
    result = await run_soak(config)
    summary = result.run.summary
    print(comparison_table([LoadResult.from_run("soak", result.run, {})]))
    print(f"connections: {config.num_connections} in {config.num_waves} waves; behaviours: "
          f"{result.behaviours}; abandoned on purpose: {summary.num_abandoned}")  # fmt: skip
    print(result.leaks.describe())
    if args.json:
        extra = {"behaviours": result.behaviours, "leaks": result.leaks.describe()}
        save_result(LoadResult.from_run("soak", result.run, extra), args.json)
    failed = not result.is_clean or summary.num_errors > args.max_errors
    if summary.num_errors > args.max_errors:
        print(f"FAIL: {summary.num_errors} errors (allowed: {args.max_errors})")
    return 1 if failed else 0


async def _bench(args: argparse.Namespace) -> int:
    from triode.load_tests.bench import run_bench

    results = await run_bench(args)
    return 0 if all(r.summary.num_errors == 0 for r in results) else 1


_COMMANDS = {"run": _run, "compare": _compare, "report": _report, "soak": _soak, "bench": _bench}
