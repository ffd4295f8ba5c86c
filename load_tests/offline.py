"""Offline throughput: triode's engine against transformers' `generate()` in one process.

    python -m triode.load_tests.offline                       # every workload, both engines
    python -m triode.load_tests.offline --workload fixed --json out.json

Workloads (fixed seeds; random token-id prompts; every request forced to its full length):
- mixed:  128 requests, prompts of 16-512 tokens, max_tokens drawn from 16-256 (ignore_eos).
          transformers runs static batches of 32 in arrival order; each batch generates until
          its longest request is done; only the requested tokens count as useful.
- fixed:  64 requests x 100-token prompts x 128 new tokens; transformers' best static batch.
- single: one request, 100-token prompt, 128 new tokens (decode speed of one stream).

Useful output tokens per second are wall-clock, prefill included, for both engines.
triode serves the engine's default weights (the bundled file's Q4_1 blocks; `--quantization
none`: the float32 weights transformers runs); each result says which.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Workload:
    name: str
    prompts: list[list[int]]
    max_tokens: list[int]
    hf_batch_sizes: list[int]

    @property
    def useful_tokens(self) -> int:
        return sum(self.max_tokens)


def _random_prompt(rng: random.Random, length: int) -> list[int]:
    # Ordinary vocabulary ids (the first few hundred ids hold special and byte tokens).
    return [rng.randrange(300, 49000) for _ in range(length)]


def make_workload(name: str, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    if name == "mixed":
        prompts = [_random_prompt(rng, rng.randint(16, 512)) for _ in range(128)]
        return Workload(name, prompts, [rng.randint(16, 256) for _ in prompts], [32])
    if name == "fixed":
        prompts = [_random_prompt(rng, 100) for _ in range(64)]
        return Workload(name, prompts, [128] * 64, [32, 64])
    if name == "single":
        return Workload(name, [_random_prompt(rng, 100)], [128], [1])
    raise ValueError(f"unknown workload {name!r}")


@dataclass
class Result:
    system: str
    workload: str
    seconds: float
    useful_tokens: int
    detail: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.useful_tokens / self.seconds


def run_triode(workload: Workload, engine_kwargs: dict) -> Result:
    from triode.engine import LLM, SamplingParams

    llm = LLM(**engine_kwargs)
    warm = SamplingParams(temperature=0, max_tokens=4)
    llm.generate([{"prompt_token_ids": workload.prompts[0][:32]}], warm, use_tqdm=False)
    params = [
        SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in workload.max_tokens
    ]
    prompts = [{"prompt_token_ids": p} for p in workload.prompts]
    engine = llm.engine
    engine.runner.timings.__init__()
    engine.step_timings.clear()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    assert produced == workload.useful_tokens, (produced, workload.useful_tokens)
    t = engine.runner.timings
    detail = {
        "weights": engine.runner.weights_info.summary(),
        "steps": t.num_steps,
        "ms_per_step": {
            "schedule": 1e3 * engine.step_timings.get("schedule", 0) / max(1, t.num_steps),
            "prepare_inputs": 1e3 * t.prepare / max(1, t.num_steps),
            "model_forward": 1e3 * t.forward / max(1, t.num_steps),
            "lm_head_and_sampler": 1e3 * t.sample / max(1, t.num_steps),
            "update": 1e3 * engine.step_timings.get("update", 0) / max(1, t.num_steps),
            "detokenize_and_stop": 1e3 * engine.step_timings.get("output", 0) / max(1, t.num_steps),
        },
        "tokens_per_step": t.num_tokens / max(1, t.num_steps),
        "preemptions": engine.scheduler.num_preemptions,
        "config": {k: v for k, v in engine_kwargs.items()},
    }
    del llm
    return Result("triode", workload.name, seconds, workload.useful_tokens, detail)


def run_transformers(workload: Workload, folder: str, batch_size: int) -> Result:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pad = 2
    with torch.no_grad():
        model.generate(torch.tensor([workload.prompts[0][:32]]), max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        for i in range(0, len(workload.prompts), batch_size):
            batch = workload.prompts[i : i + batch_size]
            new_tokens = max(workload.max_tokens[i : i + batch_size])
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        seconds = time.perf_counter() - start
    del model
    return Result(
        f"transformers(batch={batch_size})",
        workload.name,
        seconds,
        workload.useful_tokens,
        {"batch_size": batch_size},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workload", choices=["mixed", "fixed", "single", "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip transformers")
    parser.add_argument("--hf-batch", type=int, action="append", help="override batch sizes")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--attention-backend", choices=["auto", "torch", "cpu"], default=None)
    parser.add_argument("--cpu-linear", choices=["auto", "onednn", "torch"], default=None)
    parser.add_argument(
        "--quantization",
        choices=["auto", "none", "gguf", "int8", "int4"],
        default=None,
        help="triode's weights (default: the engine's, auto: the bundled file's Q4_1 blocks; "
        "none: the float32 weights transformers runs)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="triode only, once per CPU fast path on/off (attention kernel x oneDNN linears)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from triode.engine.models.loader import resolve_model

    folder = str(resolve_model(None).folder)
    engine_kwargs: dict = {}
    if args.max_num_batched_tokens:
        engine_kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.max_num_seqs:
        engine_kwargs["max_num_seqs"] = args.max_num_seqs
    if args.attention_backend:
        engine_kwargs["attention_backend"] = args.attention_backend
    if args.cpu_linear:
        engine_kwargs["cpu_linear"] = args.cpu_linear
    if args.quantization:
        engine_kwargs["quantization"] = args.quantization
    names = ["single", "fixed", "mixed"] if args.workload == "all" else [args.workload]
    weights = args.quantization or "the engine's default quantization"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, triode: {weights}")
    results: list[Result] = []
    if args.ablation:
        for name in names:
            workload = make_workload(name, args.seed)
            base: Result | None = None
            for attention in ("torch", "cpu"):
                for linear in ("torch", "onednn"):
                    kwargs = engine_kwargs | {"attention_backend": attention, "cpu_linear": linear}
                    r = run_triode(workload, kwargs)
                    r.system = f"triode(attn={attention},linear={linear})"
                    base = base or r
                    r.detail["speedup_vs_pure_torch"] = round(r.tokens_per_s / base.tokens_per_s, 3)
                    results.append(r)
                    _print(r)
                    print(f"        = {r.detail['speedup_vs_pure_torch']:.2f}x pure torch")
        names = []
    for name in names:
        workload = make_workload(name, args.seed)
        ours = run_triode(workload, engine_kwargs)
        results.append(ours)
        _print(ours)
        if args.no_baseline:
            continue
        best: Result | None = None
        for bs in args.hf_batch or workload.hf_batch_sizes:
            theirs = run_transformers(workload, folder, bs)
            results.append(theirs)
            _print(theirs)
            if best is None or theirs.tokens_per_s > best.tokens_per_s:
                best = theirs
        assert best is not None
        ratio = ours.tokens_per_s / best.tokens_per_s
        print(f"  => {name}: triode / {best.system} = {ratio:.2f}x\n")
        ours.detail["ratio_vs_best_transformers"] = round(ratio, 3)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in results], f, indent=2)
    return 0


def _print(r: Result) -> None:
    print(f"{r.workload:7s} {r.system:24s} {r.tokens_per_s:8.1f} useful tok/s ({r.seconds:.1f} s)")
    if "ms_per_step" in r.detail:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.detail["ms_per_step"].items())
        print(
            f"        per step (ms): {parts}; {r.detail['tokens_per_step']:.0f} tokens/step, "
            f"{r.detail['steps']} steps, {r.detail['preemptions']} preemptions"
        )
    if "weights" in r.detail:
        print(f"        {r.detail['weights']}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
