"""The CPU decode kernel alone, per KV-cache dtype: `python -m triode.kernels.cpu_decode_bench`.

A decode step's attention for the bundled model's shape (9 heads, 3 KV heads, head_dim 64,
blocks of 16 positions, 30 layers, each layer its own caches with the blocks scattered over the
pool): one kernel call per layer, as the engine's fused decode step makes them (straight to
the C entry point, without paged_decode's Python checks). Every dtype's caches hold the same
sequences and live in one process; the dtypes take turns each repeat, and the best repeat
counts. With many sequences the caches are far larger than any CPU cache, so the kernel waits
on DRAM and bytes read (the GB/s column) are what matter: a 16-bit cache reads half of them.
"""

from __future__ import annotations

import argparse
import time

import torch

from triode.kernels import cpu_decode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_layers(
    seq_lens: list[int], dtype: torch.dtype, num_layers: int, *, num_kv_heads: int,
    head_dim: int, block_size: int, seed: int,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:  # fmt: skip
    """`num_layers` (K, V) cache pairs and one block table: sequence s's blocks scattered."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq)
    order = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    start = 0
    for s, n in enumerate(blocks_per_seq):
        tables[s, :n] = order[start : start + n]
        start += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    layers = [
        (torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype))
        for _ in range(num_layers)
    ]
    return layers, tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--min-len", type=int, default=200)
    parser.add_argument("--max-len", type=int, default=700)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    num_heads, num_kv_heads, head_dim, block_size = 9, 3, 64, 16
    gen = torch.Generator().manual_seed(0)
    seq_lens = torch.randint(args.min_len, args.max_len + 1, (args.sequences,), generator=gen)
    names = args.dtypes.split(",")
    caches = {}
    for name in names:
        caches[name] = make_layers(
            seq_lens.tolist(), DTYPES[name], args.layers, num_kv_heads=num_kv_heads,
            head_dim=head_dim, block_size=block_size, seed=1,
        )  # fmt: skip
    lens = seq_lens.to(torch.int32)
    q = torch.randn(args.sequences, num_heads, head_dim, generator=gen)
    out = torch.empty_like(q)
    rows = torch.arange(args.sequences)
    lib = cpu_decode.load_library()
    assert lib is not None, "no C compiler"
    best = dict.fromkeys(names, float("inf"))
    for _ in range(args.repeats):
        for name in names:
            layers, tables = caches[name]
            kernel = cpu_decode.decode_function(lib, DTYPES[name])
            calls = [
                (
                    q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(),
                    k.stride(0), k.stride(1), k.stride(2), tables.data_ptr(), tables.stride(0),
                    rows.data_ptr(), rows.data_ptr(), lens.data_ptr(), args.sequences,
                    out.data_ptr(), out.stride(0), out.stride(1),
                    num_heads, num_kv_heads, head_dim, block_size, head_dim**-0.5,
                )
                for k, v in layers
            ]  # fmt: skip
            begin = time.perf_counter()
            for call in calls:
                if kernel(*call) != 0:
                    raise RuntimeError("the kernel failed")
            best[name] = min(best[name], (time.perf_counter() - begin) / args.layers)
    positions = int(seq_lens.sum())
    print(
        f"{args.sequences} sequences of {args.min_len}-{args.max_len} positions "
        f"({positions} in all), {args.layers} layers, {args.threads} threads, "
        f"best of {args.repeats}"
    )
    for name in names:
        nbytes = 2 * positions * num_kv_heads * head_dim * DTYPES[name].itemsize
        print(
            f"{name:>9}: {best[name] * 1e3:7.3f} ms a layer, {nbytes / best[name] / 1e9:5.1f} GB/s,"
            f" {best[names[0]] / best[name]:.2f}x {names[0]}"
        )


if __name__ == "__main__":
    main()
