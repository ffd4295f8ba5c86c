"""One load run from command-line options: the workload flags shared by `run` and `bench`.

args = parser.parse_args(); result = await run_load(args, "http://127.0.0.1:8000", "triode")
"""

from __future__ import annotations

import argparse
from typing import Any

from triode.load_tests.results import LoadResult
from triode.load_tests.runner import RunConfig, run_workload
from triode.load_tests.servers import discover_model
from triode.load_tests.transports import TRANSPORTS, open_transports
from triode.load_tests.workload import SamplingOptions, TokenRange, build_specs


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
    group.add_argument("--rate", type=float, default=1.0, help="open loop: requests/s (Poisson)")
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
    group.add_argument("--request-timeout", type=float, default=600.0, help="seconds")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json (or its folder) for synthetic prompts "
        "(default: the bundled SmolLM2's)",
    )
    group.add_argument("--no-progress", action="store_true")


def workload_config(args: argparse.Namespace) -> dict[str, Any]:
    """What was run, for the result file."""
    keys = ("transport", "endpoint", "prompts", "ignore_eos", "temperature", "num_requests",
            "mode", "concurrency", "rate", "max_concurrency", "ws_generations_per_socket",
            "request_timeout", "seed")  # fmt: skip
    config = {k: getattr(args, k) for k in keys}
    config["input_len"] = str(args.input_len)
    config["max_tokens"] = str(args.max_tokens)
    return config


async def run_load(args: argparse.Namespace, url: str, label: str) -> LoadResult:
    """Build the seeded workload, send it to `url`, and return the labelled result."""
    tokenizer = None
    if args.prompts == "synthetic":
        from triode.load_tests.prompts import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    specs = build_specs(
        args.num_requests,
        endpoint=args.endpoint,
        prompt_set=args.prompts,
        input_len=args.input_len,
        max_tokens=args.max_tokens,
        seed=args.seed,
        tokenizer=tokenizer,
    )
    model = args.model or await discover_model(url, args.api_key)
    options = SamplingOptions(model=model, temperature=args.temperature, ignore_eos=args.ignore_eos)
    in_flight = (
        args.concurrency if args.mode == "closed" else (args.max_concurrency or args.num_requests)
    )
    run_config = RunConfig(
        mode=args.mode,
        concurrency=args.concurrency,
        rate=args.rate,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        request_timeout_s=args.request_timeout,
        show_progress=not args.no_progress,
        progress_label=label,
    )
    async with open_transports(
        [args.transport],
        url,
        options,
        api_key=args.api_key,
        max_connections=max(in_flight, 1),
        generations_per_socket=args.ws_generations_per_socket,
    ) as transports:
        run = await run_workload(transports, specs, run_config)
    config = {"url": url, "model": model, **workload_config(args)}
    return LoadResult.from_run(label, run, config)
