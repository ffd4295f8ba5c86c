"""Where an offline workload's step time goes, by kind of work (issue 13's profile).

    python -m triode.load_tests.step_breakdown --workload mixed --num-threads 2
    python -m triode.load_tests.step_breakdown --workload mixed --prefault   # KV pages touched first

Runs one of load_tests.offline's workloads through the engine with timers around the parts of
a step (perf_counter before and after each call; every torch operation on the CPU returns when
its work is done, so the wall time of a call is its cost): the quantized linears (on AMX tiles
or the direct kernel), the LM head, the sampler, the KV-cache write, decode attention (the C
kernel) and prompt attention (torch SDPA over the gathered context), RMSNorm, RoPE; "other" is
the forward's remainder (embedding, SiLU-mul, residual adds, attention glue). Decode-only steps
that take the fused decode step (all layers in one C call) are one category of their own. Steps are also
grouped by their decode rows and whether they carry prompt tokens. The timers cost a few
percent; compare runs of this tool with each other, not with load_tests.offline.

`--prefault` writes every KV-cache page before the run: the default engine commits the cache
as blocks are first used, and on a VM a first write to a page is a page fault (with transparent
huge pages, a 2 MiB allocation and zeroing) that this separates from the KV write itself.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Timers:
    """Cumulative seconds and calls per category."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)

    def wrap(self, owner: Any, name: str, category: Callable[..., str] | str) -> None:
        """Replace owner.name by a timed call (category: a name, or a function of the args)."""
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = original(*args, **kwargs)
            key = category if isinstance(category, str) else category(*args, **kwargs)
            self.seconds[key] += time.perf_counter() - start
            self.calls[key] += 1
            return result

        setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workload", choices=["mixed", "fixed", "single"], default="mixed")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--prefault", action="store_true", help="touch the KV cache first")
    parser.add_argument(
        "--kv-cache-dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None
    )
    args = parser.parse_args(argv)

    from triode.engine import LLM, SamplingParams
    from triode.engine.models import fused_decode, llama
    from triode.engine.quant import linear as quant_linear
    from triode.kernels import backends, cpu_decode
    from triode.load_tests.offline import make_workload

    timers = Timers()
    in_head = [False]

    def linear_kind(module: Any, x: Any) -> str:
        if in_head[0]:
            return "lm head (linear)"
        return "linears, tiles" if x.shape[0] > module.max_direct_rows else "linears, direct"

    timers.wrap(quant_linear.QuantLinear, "forward", linear_kind)
    timers.wrap(llama.RMSNorm, "forward", "rmsnorm")
    timers.wrap(llama, "apply_rope", "rope")
    timers.wrap(backends.TorchBackend, "write_kv_cache", "kv write")
    timers.wrap(cpu_decode, "paged_decode", "decode attention")
    timers.wrap(cpu_decode, "prefill_attention", "prompt attention")
    # Decode-only steps may run every layer in one C call (engine.models.fused_decode): the
    # parts above then see only the steps that carry prompt tokens.
    timers.wrap(fused_decode.FusedDecode, "__call__", "fused decode steps")

    kwargs: dict = {}
    if args.num_threads:
        kwargs["num_threads"] = args.num_threads
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.kv_cache_dtype:
        kwargs["kv_cache_dtype"] = args.kv_cache_dtype
    workload = make_workload(args.workload)
    llm = LLM(**kwargs)
    engine = llm.engine
    runner = engine.runner
    if args.prefault:
        for k_cache, v_cache in runner.kv_caches:
            k_cache.zero_()
            v_cache.zero_()
    compute_logits = runner.model.compute_logits

    def timed_logits(hidden: Any) -> Any:
        in_head[0] = True
        try:
            return compute_logits(hidden)
        finally:
            in_head[0] = False

    runner.model.compute_logits = timed_logits
    timers.wrap(type(runner.sampler), "__call__", "sampler")
    warm = SamplingParams(temperature=0, max_tokens=4)
    llm.generate([{"prompt_token_ids": workload.prompts[0][:32]}], warm, use_tqdm=False)
    timers.seconds.clear()
    timers.calls.clear()
    runner.timings.__init__()
    engine.step_timings.clear()

    steps: list[tuple[int, int, float]] = []  # (decode rows, prompt tokens, seconds)
    first_token: dict[str, float] = {}
    execute = runner.execute

    def timed_execute(sched: Any, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        out = execute(sched, *a, **k)
        end = time.perf_counter()
        decode = sum(1 for item in sched.scheduled if len(item.token_ids) == 1)
        prompt = sum(len(item.token_ids) for item in sched.scheduled if len(item.token_ids) > 1)
        steps.append((decode, prompt, end - start))
        for sample_id in out.sampled:
            first_token.setdefault(sample_id, end)
        return out

    runner.execute = timed_execute
    params = [
        SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in workload.max_tokens
    ]
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in workload.prompts], params, use_tqdm=False)
    wall = time.perf_counter() - start

    import torch

    t = runner.timings
    ttft = sorted(v - start for v in first_token.values())
    print(f"{args.workload}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"wall {wall:.2f} s, {workload.useful_tokens / wall:.1f} output tok/s, {t.num_steps} steps,"
        f" {t.num_tokens / max(1, t.num_steps):.1f} tokens/step, first token p50"
        f" {statistics.median(ttft):.2f} s"
    )
    print(
        f"runner: inputs {t.prepare:.2f} s, forward {t.forward:.2f} s, LM head + sampler"
        f" {t.sample:.2f} s; engine: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in engine.step_timings.items())
    )
    in_forward = 0.0
    for key in sorted(timers.seconds, key=lambda k: -timers.seconds[k]):
        seconds = timers.seconds[key]
        print(
            f"  {key:18s} {seconds:7.2f} s {100 * seconds / wall:5.1f}%  ({timers.calls[key]} calls)"
        )
        if key not in ("lm head (linear)", "sampler"):
            in_forward += seconds
    other = t.forward - in_forward
    print(f"  {'forward, other':18s} {other:7.2f} s {100 * other / wall:5.1f}%")
    groups: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0, 0])
    for decode, prompt, seconds in steps:
        low = decode // 32 * 32
        key = f"{'with prompts' if prompt else 'decode only':12s} {low:3d}-{low + 31:3d} rows"
        g = groups[key]
        g[0] += 1
        g[1] += seconds
        g[2] += decode
        g[3] += prompt
    for key in sorted(groups):
        n, seconds, decode, prompt = groups[key]
        print(
            f"  {key}: {n:4d} steps, {1e3 * seconds / n:6.1f} ms/step"
            f" ({decode / n:.0f} decode rows, {prompt / n:.0f} prompt tokens)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
