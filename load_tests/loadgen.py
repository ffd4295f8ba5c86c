"""One load run from command-line options: the workload flags shared by `run` and `bench`.

args = parser.parse_args(); result = await run_load(args, "http://127.0.0.1:8000", "triode")

A run first sends `--warmup` requests (default 4) over the same connections and throws their
measurements away: a server's first requests after a start pay for lazy initialisation
(allocator growth, thread pools, first kernel calls) and would look about twice as slow.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from triode.load_tests.results import LoadResult
from triode.load_tests.runner import RunConfig, RunResult, Transport, run_workload
from triode.load_tests.servers import discover_model
from triode.load_tests.stages import Stage, describe_stages, run_stages
from triode.load_tests.transports import TRANSPORTS, open_transports
from triode.load_tests.workload import RequestSpec, SamplingOptions, TokenRange, build_specs

DEFAULT_WARMUP = 4
WARMUP_SEED_OFFSET = 1_000_003


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The flags that define a workload and how it is sent."""
    group = parser.add_argument_group("workload")
    group.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="sse",
        help="sse: any OpenAI-compatible server; ws: triode's /v1/ws",
    )
    group.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    group.add_argument(
        "--prompts",
        choices=("synthetic", "chat"),
        default="synthetic",
        help="synthetic: seeded words of --input-len tokens; chat: the bundled real chat prompts",
    )
    group.add_argument(
        "--input-len",
        type=TokenRange.parse,
        default=TokenRange(100, 100),
        help="synthetic prompt tokens, N or LOW:HIGH (bundled tokenizer)",
    )
    group.add_argument(
        "--max-tokens",
        type=TokenRange.parse,
        default=TokenRange(128, 128),
        help="N, or LOW:HIGH drawn per request",
    )
    group.add_argument(
        "--ignore-eos",
        action="store_true",
        help="send ignore_eos (vLLM/triode) so every request runs to max_tokens",
    )
    group.add_argument("--temperature", type=float, default=0.0)
    group.add_argument("--model", default=None, help="model name (default: GET /v1/models)")
    group.add_argument("--api-key", default=None)
    group.add_argument("--num-requests", type=int, default=100)
    group.add_argument("--mode", choices=("closed", "open"), default="closed")
    group.add_argument("--concurrency", type=int, default=16, help="closed loop: clients")
    group.add_argument(
        "--rate",
        type=parse_rates,
        default=(1.0,),
        help="open loop: requests/s (Poisson); R1,R2,... runs a rate sweep (see --sweep)",
    )
    group.add_argument(
        "--max-concurrency",
        type=int,
        default=0,
        help="open loop: cap on requests in flight (0: none)",
    )
    group.add_argument(
        "--ws-generations-per-socket",
        type=int,
        default=1,
        help="ws: concurrent generations sharing one socket",
    )
    group.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help="requests sent (and not measured) before the run, over the same connections",
    )
    group.add_argument("--request-timeout", type=float, default=600.0, help="seconds")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (or its folder) for synthetic prompts "
        "(default: the bundled SmolLM2's)",
    )
    group.add_argument("--no-progress", action="store_true")


def parse_rates(text: str) -> tuple[float, ...]:
    """'2' or '0.5,1,2,4' -> positive request rates, ascending."""
    try:
        rates = tuple(sorted(float(part) for part in text.split(",") if part.strip()))
    except ValueError:
        message = f"expected R or R1,R2,... (requests/s), got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return rates


def workload_config(args: argparse.Namespace) -> dict[str, Any]:
    """What was run, for the result file."""
    keys = ("transport", "endpoint", "prompts", "ignore_eos", "temperature", "num_requests",
            "mode", "concurrency", "max_concurrency", "ws_generations_per_socket",
            "request_timeout", "seed", "warmup")  # fmt: skip
    config = {k: getattr(args, k) for k in keys}
    config["rate"] = args.rate[0]
    config["input_len"] = str(args.input_len)
    config["max_tokens"] = str(args.max_tokens)
    return config


def describe_workload(config: dict[str, Any]) -> str:
    """The workload in one line, for the printed summary and the plots' titles."""
    route = "chat" if config.get("endpoint") == "chat" else "completions"
    if config.get("transport") == "ws":
        transport = f"WebSocket /v1/ws ({route})"
    else:
        transport = f"SSE /v1/{'chat/' if route == 'chat' else ''}completions"
    mode = config.get("mode")
    if mode == "closed":
        load = f"closed loop, {config['concurrency']} clients"
    elif mode == "open":
        load = f"open loop, Poisson {config['rate']:g} req/s"
        if config.get("max_concurrency"):
            load += f" (at most {config['max_concurrency']} in flight)"
    else:  # sweeps and stages describe their own load
        load = str(config.get("load", mode))
    if config.get("prompts") == "synthetic":
        prompts = f"synthetic prompts of {config['input_len']} tokens"
    else:
        prompts = "bundled chat prompts"
    generation = f"max_tokens {config['max_tokens']}"
    if config.get("ignore_eos"):
        generation += " (ignore_eos)"
    generation += f", temperature {config.get('temperature', 0):g}"
    count = config.get("requests_text") or f"{config['num_requests']} requests"
    if config.get("warmup"):
        count += f" (+{config['warmup']} warm-up)"
    parts = [transport, load, count, prompts, generation]
    if config.get("model") or config.get("url"):
        parts.append(f"{config.get('model', '?')} at {config.get('url', '?')}")
    return " · ".join(parts)


def build_workload(
    args: argparse.Namespace, num: int | None = None, seed: int | None = None
) -> list[RequestSpec]:
    """The seeded requests the flags describe (`num` and `seed` override theirs)."""
    tokenizer = None
    if args.prompts == "synthetic":
        from triode.load_tests.prompts import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    return build_specs(
        args.num_requests if num is None else num,
        endpoint=args.endpoint,
        prompt_set=args.prompts,
        input_len=args.input_len,
        max_tokens=args.max_tokens,
        seed=args.seed if seed is None else seed,
        tokenizer=tokenizer,
    )


async def warm_up(
    transports: Sequence[Transport], args: argparse.Namespace, in_flight: int
) -> RunResult | None:
    """Send `--warmup` requests (as many at once as the run will have); none are measured.

    NOTE: drawn with another seed, so the warm-up does not put the measured prompts in a prefix
    cache (synthetic prompts; the 54 bundled chat prompts repeat in any run longer than that)."""
    if args.warmup <= 0:
        return None
    specs = build_workload(args, num=args.warmup, seed=args.seed + WARMUP_SEED_OFFSET)
    config = RunConfig(concurrency=max(1, min(len(specs), in_flight)), show_progress=False)
    return await run_workload(transports, specs, config)


def in_flight_of(args: argparse.Namespace) -> int:
    """The most requests the run can have in flight (the connection pool's size)."""
    if args.mode == "closed":
        return max(args.concurrency, 1)
    return max(args.max_concurrency or args.num_requests, 1)


def run_config(args: argparse.Namespace, label: str, **overrides: Any) -> RunConfig:
    options: dict[str, Any] = {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "rate": args.rate[0],
        "max_concurrency": args.max_concurrency,
        "seed": args.seed,
        "request_timeout_s": args.request_timeout,
        "show_progress": not args.no_progress,
        "progress_label": label,
    }
    options.update(overrides)
    return RunConfig(**options)


@asynccontextmanager
async def target_transports(
    args: argparse.Namespace,
    url: str,
    model: str,
    max_connections: int,
    *,
    reuse_connections: bool = True,
) -> AsyncIterator[list[Transport]]:
    """The run's transport to `url`, with a pool of `max_connections`."""
    options = SamplingOptions(model=model, temperature=args.temperature, ignore_eos=args.ignore_eos)
    async with open_transports(
        [args.transport],
        url,
        options,
        api_key=args.api_key,
        max_connections=max_connections,
        generations_per_socket=args.ws_generations_per_socket,
        reuse_connections=reuse_connections,
    ) as transports:
        yield transports


async def run_load(args: argparse.Namespace, url: str, label: str) -> LoadResult:
    """Build the seeded workload, warm the server up, send the workload to `url` (or run the
    `--stages`), and return the labelled result."""
    if len(args.rate) > 1:
        raise ValueError("several rates make a sweep: use `run --sweep` or `run --rate R1,R2`")
    specs = build_workload(args)
    model = args.model or await discover_model(url, args.api_key)
    config = {"url": url, "model": model, **workload_config(args)}
    stages = getattr(args, "stages", None)
    if stages:
        return await _run_stages(args, url, label, model, specs, stages, config)
    in_flight = in_flight_of(args)
    async with target_transports(args, url, model, in_flight) as transports:
        await warm_up(transports, args, in_flight)
        run = await run_workload(transports, specs, run_config(args, label))
    config["workload"] = describe_workload(config)
    return LoadResult.from_run(label, run, config)


async def _run_stages(
    args: argparse.Namespace,
    url: str,
    label: str,
    model: str,
    specs: list[RequestSpec],
    stages: tuple[Stage, ...],
    config: dict[str, Any],
) -> LoadResult:
    peak = max(s.target for s in stages)
    async with target_transports(
        args, url, model, max(peak, 1), reuse_connections=False
    ) as transports:
        await warm_up(transports, args, peak)
        run, reports, vus = await run_stages(
            transports,
            specs,
            stages,
            request_timeout_s=args.request_timeout,
            show_progress=not args.no_progress,
            label=label,
        )
    config.update(
        mode="stages",
        stages=describe_stages(stages),
        load=f"stages {describe_stages(stages)} (VUs, a new connection per request)",
        requests_text=f"{run.summary.num_requests} requests",
    )
    config["workload"] = describe_workload(config)
    run.summary.extra["stages"] = [r.to_json() for r in reports]
    run.summary.extra["vus"] = [[round(t, 6), n] for t, n in vus]
    return LoadResult.from_run(label, run, config)
