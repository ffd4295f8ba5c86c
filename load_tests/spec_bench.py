"""Speculative decoding, measured: speculation off against on, in one process, same weights.

    python -m triode.load_tests.spec_bench                  # all three parts
    python -m triode.load_tests.spec_bench --part single --json out.json
    python -m triode.load_tests.spec_bench --quantization none --method draft_model \
        --draft-quantization int4     # float32 served model, an int4 copy of it as the draft

Parts (greedy, bundled model, the engine's default configuration otherwise):
- single:    each copy-heavy prompt (load_tests/data/copy_prompts.json: repeat, fix typos,
             rename a parameter, quote) as a single stream; tokens/s off and on, acceptance.
- chat64:    64 concurrent chat prompts (load_tests/data/chat_prompts.json) with speculation
             enabled at its default load switch against speculation off: throughput.
- crossover: the copy-heavy and chat prompts at batch sizes 1..16 with the load switch
             disabled, to find the batch size where speculation stops paying (the default of
             `disable_by_batch_size`).

Off and on alternate per measurement (off, on, off, on...) so a change in machine load
affects both sides alike; each side's number is its best of `--repeats`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"


def _prompts(llm, name: str) -> list[list[int]]:
    from triode.engine.llm import apply_chat_template

    items = json.loads((DATA / name).read_text())
    return [apply_chat_template(llm.get_tokenizer(), item["messages"]) for item in items]


def _timed(llm, prompts: list[list[int]], max_tokens: int, speculate: bool, limit: int) -> dict:
    from triode.engine import SamplingParams

    engine = llm.engine
    proposer = engine.proposer
    spec = engine.speculative_config
    if not speculate:
        engine.proposer = None
    else:
        engine.speculative_config = dataclasses.replace(spec, disable_by_batch_size=limit)
    stats = engine.scheduler.spec_stats
    before = stats.copy()
    engine.scheduler.kv.reset_prefix_cache()
    params = [SamplingParams(temperature=0, max_tokens=max_tokens)] * len(prompts)
    t0 = time.perf_counter()
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        engine.proposer = proposer
        engine.speculative_config = spec
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    drafts = stats.num_draft_tokens - before.num_draft_tokens
    accepted = stats.num_accepted_tokens - before.num_accepted_tokens
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "draft_tokens": drafts,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafts if drafts else None,
        "outputs": [o.outputs[0].token_ids for o in outs],
    }


def _compare(llm, prompts, max_tokens: int, repeats: int, limit: int) -> dict:
    best: dict[bool, dict] = {}
    for _ in range(repeats):
        for speculate in (False, True):
            r = _timed(llm, prompts, max_tokens, speculate, limit)
            if speculate not in best or r["seconds"] < best[speculate]["seconds"]:
                best[speculate] = r
    off, on = best[False], best[True]
    return {
        "off_tokens_per_s": round(off["tokens_per_s"], 2),
        "on_tokens_per_s": round(on["tokens_per_s"], 2),
        "speedup": round(on["tokens_per_s"] / off["tokens_per_s"], 3),
        "acceptance_rate": on["acceptance_rate"] and round(on["acceptance_rate"], 3),
        "same_tokens": off["outputs"] == on["outputs"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["single", "chat64", "crossover", "all"], default="all")
    parser.add_argument("--k", type=int, default=5, help="num_speculative_tokens")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--model", help="the served model (default: the bundled SmolLM2)")
    parser.add_argument(
        "--quantization",
        choices=["auto", "none", "gguf", "int8", "int4"],
        default="auto",
        help="the served model's weights (engine default: auto, the bundled file's Q4_1)",
    )
    parser.add_argument("--method", choices=["ngram", "draft_model"], default="ngram")
    parser.add_argument(
        "--draft-model", help="draft_model: a folder or .gguf (default: the bundled model's)"
    )
    parser.add_argument(
        "--draft-quantization",
        choices=["none", "int8", "int4", "gguf"],
        help="draft_model: its weights (default: as the served model's)",
    )
    parser.add_argument(
        "--num-prompts", type=int, help="only the first N copy-heavy prompts (a quick check)"
    )
    args = parser.parse_args(argv)

    from triode.engine import LLM

    spec: dict = {"method": args.method, "num_speculative_tokens": args.k}
    if args.method == "draft_model":
        from triode.engine.models.loader import resolve_model

        spec["model"] = args.draft_model or str(resolve_model(None).folder)
        if args.draft_quantization:
            spec["quantization"] = args.draft_quantization
    llm = LLM(model=args.model, quantization=args.quantization, speculative_config=spec)
    default_limit = llm.engine.speculative_config.disable_by_batch_size
    copy = _prompts(llm, "copy_prompts.json")[: args.num_prompts]
    chat = _prompts(llm, "chat_prompts.json")
    _timed(llm, copy[:1], 8, True, 1000)  # warm-up
    results: dict = {
        "k": args.k,
        "disable_by_batch_size": default_limit,
        "speculative": spec,
        "served_weights": llm.engine.runner.weights_info.method,
        "draft_weights": getattr(llm.engine.proposer, "runner", None)
        and llm.engine.proposer.runner.weights_info.method,
    }
    if args.part in ("single", "all"):
        singles = [_compare(llm, [p], args.max_tokens, args.repeats, default_limit) for p in copy]
        off = sum(r["off_tokens_per_s"] for r in singles) / len(singles)
        on = sum(r["on_tokens_per_s"] for r in singles) / len(singles)
        results["single"] = {"prompts": singles, "mean_speedup": round(on / off, 3)}
        print("single:", json.dumps(results["single"]), flush=True)
    if args.part in ("chat64", "all"):
        prompts = (chat * 2)[:64]
        results["chat64"] = _compare(llm, prompts, args.max_tokens, args.repeats, default_limit)
        print("chat64:", json.dumps(results["chat64"]), flush=True)
    if args.part in ("crossover", "all"):
        rows = []
        for batch in (1, 2, 4, 8, 16):
            for name, pool in (("copy", copy), ("chat", chat)):
                prompts = (pool * batch)[:batch]
                r = _compare(llm, prompts, 64, 1, 1000)
                rows.append({"batch": batch, "prompts": name, **r})
                print("crossover:", json.dumps(rows[-1]), flush=True)
        results["crossover"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
