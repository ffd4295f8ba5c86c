"""What constrained decoding costs: JSON-schema requests against unconstrained ones, in one
process, on identical prompts and token counts.

    python -m triode.load_tests.structured_bench                  # 64 concurrent + 1 stream
    python -m triode.load_tests.structured_bench --json out.json

Workloads (the bundled chat prompts, chat template applied, greedy):
- batch:  64 requests at once x 64 output tokens.
- single: one request x 128 output tokens (one stream's decode speed).
Each runs unconstrained and constrained, alternating (U C U C ...), `--repeats` times; the
best run of each side counts. Every request produces exactly its token count on both sides:
unconstrained ones with ignore_eos, constrained ones with JSON schemas that need more tokens
than that to finish (arrays with a large minItems), so every sampled token passes through a
grammar mask. Four distinct schemas share the batch (the compile cache holds them; the first
compile of each happens in the warm-up). Throughput = output tokens / wall-clock seconds,
prefill included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def schemas() -> list[dict]:
    """JSON schemas no answer can finish within the benchmark's token counts."""

    def notes(key: str, item: dict) -> dict:
        return {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 60},
                key: {"type": "array", "items": item, "minItems": 200},
            },
            "required": ["title", key],
        }

    return [
        notes("notes", {"type": "string", "maxLength": 40}),
        notes(
            "steps",
            {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "minutes": {"type": "integer", "minimum": 0, "maximum": 600},
                },
                "required": ["text", "minutes"],
            },
        ),
        notes("scores", {"type": "number", "minimum": 0, "maximum": 10}),
        notes("tags", {"enum": ["red", "green", "blue", "quiet", "loud", "fast", "slow"]}),
    ]


@dataclass
class Run:
    workload: str
    constrained: bool
    seconds: float
    tokens: int
    ms_waiting_for_masks_per_step: float = 0.0
    ms_filling_masks_per_step: float = 0.0
    steps: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Comparison:
    workload: str
    unconstrained: list[Run] = field(default_factory=list)
    constrained: list[Run] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        best_u = max(r.tokens_per_s for r in self.unconstrained)
        best_c = max(r.tokens_per_s for r in self.constrained)
        return best_c / best_u


def run_once(llm, prompts, max_tokens: int, constrained: bool, name: str) -> Run:
    from triode.engine import SamplingParams
    from triode.engine.sampling.structured_outputs import StructuredOutputsParams

    specs = [StructuredOutputsParams(json=s) for s in schemas()]
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=max_tokens,
            ignore_eos=True,
            structured_outputs=specs[i % len(specs)] if constrained else None,
        )
        for i in range(len(prompts))
    ]
    engine = llm.engine
    stats = engine.structured.stats
    stats.reset()
    engine.runner.timings.__init__()
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    assert tokens == max_tokens * len(prompts), (tokens, max_tokens * len(prompts))
    if constrained:  # every answer is still a valid prefix of its schema's language
        assert all(o.outputs[0].text.startswith('{"title": "') for o in outs)
    steps = max(1, engine.runner.timings.num_steps)
    return Run(
        name,
        constrained,
        seconds,
        tokens,
        1e3 * stats.wait_s / steps,
        1e3 * stats.fill_s / steps,
        steps,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64, help="concurrent requests")
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--single-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workload", choices=["batch", "single", "all"], default="all")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from triode.engine import LLM, SamplingParams
    from triode.engine.llm import apply_chat_template
    from triode.load_tests.prompts import chat_prompts

    llm = LLM()
    tokenizer = llm.get_tokenizer()
    conversations = chat_prompts()
    prompts = [
        apply_chat_template(tokenizer, list(conversations[i % len(conversations)]))
        for i in range(args.batch)
    ]
    # Warm-up: oneDNN kernels, the llguidance tokenizer, each schema's first compile.
    warm = llm.engine.structured
    for spec_schema in schemas():
        from triode.engine.sampling.structured_outputs import StructuredOutputsParams

        warm.compile(StructuredOutputsParams(json=spec_schema))
    llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=4), use_tqdm=False)

    workloads = []
    if args.workload in ("batch", "all"):
        workloads.append(("batch", prompts, args.batch_tokens))
    if args.workload in ("single", "all"):
        workloads.append(("single", prompts[:1], args.single_tokens))
    results = []
    for name, workload_prompts, max_tokens in workloads:
        comparison = Comparison(name)
        for _ in range(args.repeats):
            for constrained in (False, True):
                run = run_once(llm, workload_prompts, max_tokens, constrained, name)
                (comparison.constrained if constrained else comparison.unconstrained).append(run)
                print(
                    f"{name:6s} {'json-schema' if constrained else 'plain':11s} "
                    f"{run.tokens_per_s:7.1f} tok/s ({run.seconds:.2f} s, {run.steps} steps; "
                    f"masks: {run.ms_filling_masks_per_step:.2f} ms filled, "
                    f"{run.ms_waiting_for_masks_per_step:.2f} ms waited per step)",
                    flush=True,
                )
        results.append(comparison)
        print(f"{name}: constrained / unconstrained = {comparison.ratio:.3f}", flush=True)
    print()
    print("| workload | unconstrained (best) | JSON schema (best) | ratio |")
    print("|---|---|---|---|")
    for c in results:
        best_u = max(r.tokens_per_s for r in c.unconstrained)
        best_c = max(r.tokens_per_s for r in c.constrained)
        print(f"| {c.workload} | {best_u:.1f} tok/s | {best_c:.1f} tok/s | **{c.ratio:.3f}** |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {
                        "workload": c.workload,
                        "ratio": c.ratio,
                        "median_ratio": statistics.median(r.tokens_per_s for r in c.constrained)
                        / statistics.median(r.tokens_per_s for r in c.unconstrained),
                        "runs": [asdict(r) for r in c.unconstrained + c.constrained],
                    }
                    for c in results
                ],
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
