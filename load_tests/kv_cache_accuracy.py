"""What a 16-bit KV cache costs in accuracy: the bundled GGUF model teacher-forced over the
bundled text (tests/engine/quant/scoring.py) with each cache dtype, against the float32 cache
and transformers: top-1 agreement and perplexity.

By default every step runs on the direct kernel with float32 activations (the file's numbers
exactly: the float32 cache then equals transformers), so the differences are the cache's alone;
`--serving-path` keeps the default kernels (bf16 activations on big steps), whose own rounding
moves about 1% of the top-1 tokens whatever the cache.

    python -m triode.load_tests.kv_cache_accuracy [--length 2048] [--chunk 64] [--serving-path]
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=2048, help="tokens of the text")
    parser.add_argument("--chunk", type=int, default=64, help="tokens per step")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--serving-path", action="store_true", help="the default kernels")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from triode.engine.models.loader import resolve_model
    from triode.engine.quant.linear import QuantLinear
    from triode.tests.engine.quant.scoring import (
        compare,
        score_engine,
        score_transformers,
        text_ids,
    )

    folder = resolve_model(None).folder
    ids = text_ids(AutoTokenizer.from_pretrained(str(folder)))[: args.length]
    options: dict = {"quantization": "gguf"}
    prepare = None
    if not args.serving_path:
        options["quant_direct_max_rows"] = args.chunk

        def prepare(runner) -> None:
            for module in runner.model.modules():
                if isinstance(module, QuantLinear):
                    module.int8_activations = False

    reference = score_transformers(folder, ids)
    base: tuple[torch.Tensor, torch.Tensor] | None = None
    print(
        f"{len(ids)} tokens, {args.chunk} per step, {'serving' if args.serving_path else 'direct'} kernels"
    )
    for name in args.dtypes.split(","):
        start = time.perf_counter()
        tops, logprobs, runner = score_engine(
            folder, ids, args.chunk, prepare, kv_cache_dtype=name, **options
        )
        assert runner.kv_dtype == getattr(torch, name), runner.kv_dtype
        ref = (reference[0][: len(tops)], reference[1][: len(tops)])
        hf_top1, ppl, hf_ppl = compare((tops, logprobs), ref)
        base = base or (tops, logprobs)
        top1, _, base_ppl = compare((tops, logprobs), base)
        worst = float((logprobs - base[1]).abs().max())
        print(
            f"{name:>8}: top-1 vs float32 cache {top1:.2%}, vs transformers {hf_top1:.2%}; "
            f"perplexity {ppl:.4f} ({ppl / base_ppl - 1:+.3%} vs float32 cache, transformers "
            f"{hf_ppl:.4f}); largest log-prob change {worst:.3f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
