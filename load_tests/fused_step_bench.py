"""One forward step of given shapes on the module path and on the fused step (its prompt chunks
row by row through the decode kernel, or through the chunk kernel), alternated in one process
(issue 13: where the fused step should take prompt rows, and how).

    python -m triode.load_tests.fused_step_bench [--num-threads 2] [--repeats 5]

Each case is a step of decode rows (one new token after `c` cached ones) and prompt chunks
(`n` new tokens after `start` cached ones) over the bundled model's KV cache (the cache holds
zeros: attention costs the same whatever the values). All variants run the same step from the
same cache state, alternately, `--repeats` times; the best of each is printed with the
context positions the step's prompt rows read (what `FusedDecode.max_prompt_positions`
bounds). The fused step is forced on for every case (its bound lifted) to show both sides.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name: (decode rows' cached lengths, prompt chunks as (cached tokens, new tokens))
CASES: dict[str, tuple[list[int], list[tuple[int, int]]]] = {
    "16 decodes": ([150] * 16, []),
    "16 decodes + 16 prompt": ([150] * 16, [(0, 16)]),
    "16 decodes + 64 prompt": ([150] * 16, [(0, 64)]),
    "16 decodes + 36 prompt after 64": ([150] * 16, [(64, 36)]),
    "16 decodes + 2 x 64 prompt": ([150] * 16, [(0, 64), (0, 64)]),
    "16 decodes + 2 x 100 prompt": ([150] * 16, [(0, 100), (0, 100)]),
    "100 decodes + 64 after 200": ([400] * 100, [(200, 64)]),
    "4 x 128 prompt": ([], [(0, 128)] * 4),
    "1 x 512 prompt": ([], [(0, 512)]),
    "8 x 64 after 300": ([], [(300, 64)] * 8),
    "256 after 500": ([], [(500, 256)]),
    "2 x 256 after 256": ([], [(256, 256)] * 2),
    "512 after 1500": ([], [(1500, 512)]),
    "128 after 3000": ([], [(3000, 128)]),
    "16 decodes (2000) + 256 after 2000": ([2000] * 16, [(2000, 256)]),
    # steps as the mixed workload's (128 prompts of 16-512 tokens at once) with prompts in them
    "14 decodes (400) + 200, 150, 148": ([400] * 14, [(0, 200), (0, 150), (0, 148)]),
    "14 decodes (400) + 212 after 300, 286": ([400] * 14, [(300, 212), (0, 286)]),
    "109 decodes (300) + 313 after 100": ([300] * 109, [(100, 313)]),
}


def _step(runner, decodes: list[int], chunks: list[tuple[int, int]], rng: random.Random):
    import torch

    from triode.engine.runner.attention import AttentionMetadata

    bs = runner.block_size
    q_lens, seq_lens, tables, slots, positions = [], [], [], [], []
    next_block = 0
    for start, n in [(c, 1) for c in decodes] + chunks:
        blocks = -(-(start + n) // bs)
        table = list(range(next_block, next_block + blocks))
        next_block += blocks
        q_lens.append(n)
        seq_lens.append(start + n)
        tables.append(table)
        for p in range(start, start + n):
            slots.append(table[p // bs] * bs + p % bs)
            positions.append(p)
    meta = AttentionMetadata.build(
        q_lens, seq_lens, tables, slots, bs, runner.kv_bytes_per_token, runner.device,
        runner.attention,
    )  # fmt: skip
    ids = torch.tensor([rng.randrange(300, 49000) for _ in positions])
    read = sum(n * (start + n) - n * (n - 1) // 2 for start, n in chunks if n > 1)
    return ids, torch.tensor(positions), meta, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kv-cache-dtype", default="auto")
    args = parser.parse_args()
    import torch

    from triode.engine import LLM
    from triode.engine.models.fused_decode import FusedDecode

    llm = LLM(
        enable_prefix_caching=False, num_kv_blocks=6000, block_size=16,
        num_threads=args.num_threads, kv_cache_dtype=args.kv_cache_dtype,
    )  # fmt: skip
    runner = llm.engine.runner
    model = runner.model
    FusedDecode.max_prompt_positions = 1 << 62
    rng = random.Random(0)
    # (column, fused step on, its prompt chunks through the chunk kernel)
    variants = [("module", False, 0), ("rows", True, 0), ("chunks", True, 1)]
    header = "".join(f"{name:>10s}" for name, _, _ in variants)
    print(f"{'step':34s} {'rows':>5s} {'read':>8s}{header} {'module/chunks':>14s}")
    with torch.inference_mode():
        for name, (decodes, chunks) in CASES.items():
            ids, positions, meta, read = _step(runner, decodes, chunks, rng)
            best = {column: float("inf") for column, _, _ in variants}
            for _ in range(args.repeats):
                for column, fused, chunk_kernel in variants:
                    model.fused_decode_enabled = fused
                    if fused and model._fused is not None:
                        model._fused[1].model_desc.chunk_kernel = chunk_kernel
                    start = time.perf_counter()
                    model(ids, positions, runner.kv_caches, meta)
                    best[column] = min(best[column], time.perf_counter() - start)
            model.fused_decode_enabled = True
            times = "".join(f"{best[column] * 1e3:8.1f}ms" for column, _, _ in variants)
            ratio = best["module"] / best["chunks"]
            print(f"{name:34s} {ids.numel():5d} {read:8d}{times} {ratio:14.2f}", flush=True)


if __name__ == "__main__":
    main()
