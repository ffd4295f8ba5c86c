"""`run`: one workload against a server and its peers, with SLOs, stages, or a rate sweep.

Servers run one after another, never at once (they would share the machine). With `--json` and
more than one server, each result goes to PATH with its label before the suffix
(`out.json` -> `out.triode.json`, `out.vllm.json`), ready for `compare`; a sweep writes one JSON
for all servers. Exit status: with `--slo`, 1 when any server misses it (for a sweep: when some
server meets it at no rate tried); without, 1 when any request failed (a sweep: 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from triode.load_tests.compare import comparison_table
from triode.load_tests.loadgen import describe_workload, run_load, workload_config
from triode.load_tests.results import LoadResult, save_result
from triode.load_tests.slo import check_slo
from triode.load_tests.stages import stages_table


async def run_and_report(args: argparse.Namespace, targets: list[tuple[str, str]]) -> int:
    results = [await run_load(args, url, label) for label, url in targets]
    print(comparison_table(results))
    for result in results:
        print(f"workload ({result.label}): {result.config['workload']}")
        if "stages" in result.summary.extra:
            print(stages_table(result.summary.extra["stages"]))
    if args.json:
        for result in results:
            save_result(result, _path_for(args.json, result.label, len(results)))
    if args.png:
        _plot(args, results)
    if args.slo is None:
        return 0 if all(r.summary.num_errors == 0 for r in results) else 1
    is_met = True
    for result in results:
        verdict = check_slo(args.slo, result.summary)
        print(f"SLO {args.slo} for {result.label}: {'met' if verdict.is_met else 'MISSED'}")
        for line in verdict.lines():
            print(f"  {line}")
        is_met = is_met and verdict.is_met
    return 0 if is_met else 1


def _plot(args: argparse.Namespace, results: list[LoadResult]) -> None:
    if args.stages:
        from triode.load_tests.stages_report import plot_stages

        for result in results:
            plot_stages(result, _path_for(args.png, result.label, len(results)))
        return
    from triode.load_tests.report import plot_results

    plot_results(results, args.png)


def _path_for(path: Path, label: str, num_results: int) -> Path:
    """PATH itself for one result; PATH with the label before the suffix for several."""
    if num_results == 1:
        return path
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return path.with_name(f"{path.stem}.{safe}{path.suffix}")


async def run_sweep(args: argparse.Namespace, targets: list[tuple[str, str]]) -> int:
    from triode.load_tests.sweep import knee_line, save_sweep, sweep_server
    from triode.load_tests.sweep_report import plot_sweep

    sweeps = []
    for label, url in targets:
        sweeps.append(await sweep_server(args, label, url, args.slo))
    config = workload_config(args)
    config.update(
        mode="sweep",
        rates=None if args.sweep else list(args.rate),
        sweep_points=args.sweep_points if args.sweep else None,
        load="open loop, Poisson at each offered rate"
        + (" (rates around each server's probed saturation)" if args.sweep else ""),
        servers={s.label: {"url": s.url, "model": s.model} for s in sweeps},
        requests_text=f"{args.num_requests} requests per rate",
    )
    config["workload"] = describe_workload(config)
    print(f"workload: {config['workload']}")
    for sweep in sweeps:
        print(knee_line(sweep))
    if args.json:
        save_sweep(sweeps, config, args.slo, args.json)
    if args.png:
        plot_sweep(sweeps, args.png, config["workload"])
    if args.slo is not None and any(s.max_rate_within_slo is None for s in sweeps):
        return 1
    return 0
