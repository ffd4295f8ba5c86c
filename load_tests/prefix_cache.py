"""Time to first token with and without prefix caching, in one run.

    python -m triode.load_tests.prefix_cache [--requests 16] [--system-tokens 1500]

Chat requests share one long system prompt (~1,500 tokens) and differ in the user's question.
They arrive one after another (each runs to completion before the next arrives), so TTFT is the
prompt's compute time, not queueing. The same sequence runs on an engine with prefix caching and
on one without; then the exact same long prompt is sent twice to each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "What is the first rule?", "Summarize the policy in one line.", "Who may approve refunds?",
    "How long are logs kept?", "What happens after three failed logins?", "Can I work remotely?",
    "What is the on-call rotation?", "Which data is confidential?", "How do I report a bug?",
    "What is the dress code?", "When are reviews held?", "Who owns the budget?",
    "How are holidays counted?", "What is the escalation path?", "Where is the archive?",
    "How do I request access?", "What is the travel policy?", "How are incidents named?",
]  # fmt: skip


def system_prompt(tokenizer, num_tokens: int) -> str:
    """Deterministic policy-like text of about `num_tokens` tokens."""
    lines = []
    i = 0
    while True:
        lines.append(
            f"Rule {i + 1}: requests of category {i % 7} are handled by team {i % 5} within "
            f"{(i * 3) % 11 + 1} business days, and every exception is recorded in ledger {i}."
        )
        text = "You are the operations assistant. Follow these rules.\n" + "\n".join(lines)
        if len(tokenizer.encode(text, add_special_tokens=False)) >= num_tokens:
            return text
        i += 1


def ttft(engine, request_id: str, prompt_ids: list[int], params) -> float:
    """Seconds from submission to the first token; the request then runs to completion."""
    start = time.perf_counter()
    engine.add_request(request_id, prompt_ids, params)
    first = None
    while engine.has_unfinished_requests():
        for delta in engine.step():
            if first is None and delta.token_ids:
                first = time.perf_counter() - start
    assert first is not None
    return first


def run(num_requests: int, system_tokens: int, max_tokens: int) -> dict:
    from triode.engine import EngineConfig, LLMEngine, SamplingParams
    from triode.engine.llm import apply_chat_template

    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    results: dict = {}
    for caching in (False, True):
        engine = LLMEngine(EngineConfig(enable_prefix_caching=caching))
        tok = engine.tokenizer
        system = system_prompt(tok, system_tokens)
        prompts = [
            apply_chat_template(
                tok,
                [{"role": "system", "content": system}, {"role": "user", "content": q}],
            )
            for q in (QUESTIONS * (num_requests // len(QUESTIONS) + 1))[:num_requests]
        ]
        ttft(engine, "warmup", tok.encode("Hello there", add_special_tokens=False), params)
        times = [ttft(engine, f"chat-{i}", p, params) for i, p in enumerate(prompts)]
        # The exact same long prompt twice, one this engine has never seen: its first block
        # already differs from the shared system prompt, so the first time is a cold start.
        same = apply_chat_template(
            tok, [{"role": "system", "content": "Night shift. " + system},
                  {"role": "user", "content": "Hello?"}],
        )  # fmt: skip
        first = ttft(engine, "same-1", same, params)
        second = ttft(engine, "same-2", same, params)
        stats = engine.stats()
        results["on" if caching else "off"] = {
            "prompt_tokens": len(prompts[0]),
            "ttft_first_s": times[0],
            "ttft_rest_median_s": statistics.median(times[1:]),
            "ttft_rest_mean_s": statistics.fmean(times[1:]),
            "identical_prompt_first_s": first,
            "identical_prompt_second_s": second,
            "prefix_cache_queries": stats.prefix_cache_queries,
            "prefix_cache_hits": stats.prefix_cache_hits,
        }
        del engine
    on, off = results["on"], results["off"]
    results["rest_median_speedup"] = off["ttft_rest_median_s"] / on["ttft_rest_median_s"]
    results["identical_second_over_first"] = (
        on["identical_prompt_second_s"] / on["identical_prompt_first_s"]
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--system-tokens", type=int, default=1500)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = run(args.requests, args.system_tokens, args.max_tokens)
    for mode in ("off", "on"):
        r = results[mode]
        print(
            f"prefix caching {mode:3s}: prompt {r['prompt_tokens']} tokens; TTFT first "
            f"{r['ttft_first_s'] * 1e3:.0f} ms, others median {r['ttft_rest_median_s'] * 1e3:.0f} ms "
            f"(mean {r['ttft_rest_mean_s'] * 1e3:.0f}); identical prompt twice: "
            f"{r['identical_prompt_first_s'] * 1e3:.0f} ms then "
            f"{r['identical_prompt_second_s'] * 1e3:.0f} ms; cache hits "
            f"{r['prefix_cache_hits']}/{r['prefix_cache_queries']} tokens"
        )
    print(
        f"=> shared system prompt: median TTFT {results['rest_median_speedup']:.1f}x faster with "
        f"caching; identical prompt: second TTFT = {results['identical_second_over_first']:.3f} "
        "of the first"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
