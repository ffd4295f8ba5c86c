"""Cost of the prefix cache's block digests (engine/core/block_hash.py) against a step's time.

    python -m triode.load_tests.block_hash_bench [--blocks 100000] [--block-size 16]

In one process: the keyed BLAKE2b chain per full block, the Python `hash()` chain it replaced,
and one step of the bundled model over a full token budget (the most blocks a step can
complete, hence register, is budget / block size).
"""

from __future__ import annotations

import argparse
import random
import time

from triode.engine.config import EngineConfig
from triode.engine.core.block_hash import BlockHasher
from triode.engine.core.kv_cache_manager import KVCacheManager
from triode.engine.core.request import Request
from triode.engine.llm_engine import LLMEngine
from triode.engine.sampling.sampling_params import SamplingParams


def per_block_us(blocks: list[list[int]], digest) -> float:
    start = time.perf_counter()
    parent = None
    for tokens in blocks:
        parent = digest(parent, tokens)
    return (time.perf_counter() - start) / len(blocks) * 1e6


def python_hash(parent: int | None, tokens: list[int]) -> int:
    """The chain triode used before issue 10 (64 bits, unsalted)."""
    return hash((0x7472696F6465 if parent is None else parent, tuple(tokens), ()))


def request_path_us(num_tokens: int, block_size: int, repeats: int = 200) -> float:
    """Digests of a whole prompt through the KV-cache manager (slicing included)."""
    kv = KVCacheManager(num_blocks=num_tokens // block_size + 1, block_size=block_size)
    prompt = [random.randrange(49152) for _ in range(num_tokens)]
    start = time.perf_counter()
    for i in range(repeats):
        request = Request(str(i), prompt, SamplingParams(), max_tokens=1)
        kv.get_computed_blocks(request)
    return (time.perf_counter() - start) / repeats * 1e6


def step_ms(budget: int) -> float:
    """One step of the bundled model over `budget` prompt tokens (median of 3)."""
    engine = LLMEngine(EngineConfig(max_num_batched_tokens=budget, num_kv_blocks=256))
    times = []
    for i in range(3):
        prompt = [random.randrange(100, 40000) for _ in range(budget + 1)]
        engine.add_request(f"p{i}", prompt, SamplingParams(max_tokens=1))
        start = time.perf_counter()
        engine.step()  # the first `budget` prompt tokens
        times.append((time.perf_counter() - start) * 1e3)
        engine.abort([f"p{i}"])
    return sorted(times)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--budget", type=int, default=512, help="tokens in the step")
    args = parser.parse_args()
    random.seed(0)
    bs = args.block_size
    blocks = [[random.randrange(49152) for _ in range(bs)] for _ in range(args.blocks)]
    old = per_block_us(blocks, python_hash)
    new = per_block_us(blocks, BlockHasher())
    whole = request_path_us(2048, bs)
    step = step_ms(args.budget)
    per_step = args.budget // bs * new / 1e3
    print(f"python hash() chain:        {old:.2f} us/block")
    print(f"keyed BLAKE2b-256 chain:    {new:.2f} us/block ({new / old:.1f}x)")
    print(f"2,048-token prompt lookup:  {whole:.0f} us ({2048 // bs} blocks)")
    print(f"step over {args.budget} tokens:      {step:.1f} ms")
    print(
        f"digests of the {args.budget // bs} blocks it completes: {per_step:.3f} ms "
        f"= {per_step / step:.3%} of the step"
    )


if __name__ == "__main__":
    main()
