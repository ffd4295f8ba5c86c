"""GPU benchmark of the Triton kernels against the planned torch path: `python -m triode.kernels.bench`.

For each shape it times one call of each implementation (triton.testing.do_bench: median over
repeats, L2 flushed between them) and reports the achieved memory bandwidth — bytes of K/V
context, q, out (and block tables) that a call must move, divided by its time — as a fraction
of the card's peak, and the attention FLOP rate. Decode is memory-bound, so its bandwidth
fraction is the number to watch; prefill chunks are compute-bound, read their TFLOP/s.

The torch path's per-step plan is built outside the timed call: the engine builds it once per
step and reuses it in every layer. On a machine without CUDA this prints a message and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch

# Peak DRAM bandwidth (TB/s) by device-name fragment; the first match wins, so the specific
# names come before the general ones.
CARD_PEAK_TBPS = [
    ("H200", 4.8),
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),  # SXM5 (reported as "NVIDIA H100 80GB HBM3")
    ("GH200", 4.0),
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIe", 1.935),
    ("A100", 1.555),  # 40 GB parts
    ("L40S", 0.864),
    ("L4", 0.3),
    ("A10", 0.6),
    ("RTX 4090", 1.008),
]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class Shape:
    name: str
    q_lens: list[int]
    seq_lens: list[int]


@dataclass(slots=True)
class Result:
    kernel: str
    shape: str
    triton_us: float
    torch_us: float
    bytes_moved: int
    triton_tbps: float
    peak_fraction: float | None
    triton_tflops: float
    max_abs_err: float


def lookup_peak_tbps(device_name: str) -> float | None:
    for fragment, tbps in CARD_PEAK_TBPS:
        if fragment.lower() in device_name.lower():
            return tbps
    return None


def default_shapes() -> list[Shape]:
    shapes = []
    for batch in (64, 256):
        for ctx in (512, 1024, 2048, 4096):
            shapes.append(Shape(f"decode b={batch} ctx={ctx}", [1] * batch, [ctx] * batch))
    gen = torch.Generator().manual_seed(0)
    mixed = torch.randint(256, 4096, (128,), generator=gen).tolist()
    shapes.append(Shape("decode b=128 ctx=256..4096", [1] * 128, mixed))
    shapes.append(Shape("prefill 1x2048 fresh", [2048], [2048]))
    shapes.append(Shape("prefill 4x512 on 1024 cached", [512] * 4, [1536] * 4))
    shapes.append(
        Shape("mixed 1x512 chunk + 64 decode ctx=2048", [512] + [1] * 64, [1024] + [2048] * 64)
    )
    return shapes


def make_inputs(shape: Shape, args: argparse.Namespace, device: torch.device) -> tuple:
    dtype = DTYPES[args.dtype]
    bs, kvh, d = args.block_size, args.num_kv_heads, args.head_dim
    blocks_per_seq = [-(-c // bs) for c in shape.seq_lens]
    num_blocks = sum(blocks_per_seq)
    k_cache = torch.randn(num_blocks, bs, kvh, d, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    # Shuffled tables: real caches are fragmented, and locality would flatter the kernel.
    perm = torch.randperm(num_blocks, device=device).to(torch.int32)
    tables = torch.zeros(len(shape.seq_lens), max(blocks_per_seq), dtype=torch.int32, device=device)
    start = 0
    for s, n in enumerate(blocks_per_seq):
        tables[s, :n] = perm[start : start + n]
        start += n
    cu = torch.tensor(
        [0, *torch.tensor(shape.q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    lens = torch.tensor(shape.seq_lens, dtype=torch.int32, device=device)
    q = torch.randn(sum(shape.q_lens), args.num_heads, d, dtype=dtype, device=device)
    return q, k_cache, v_cache, tables, cu, lens, d**-0.5


def attention_cost(shape: Shape, args: argparse.Namespace, elem: int) -> tuple[int, int]:
    """(bytes a call must move, FLOPs of QK^T and PV over the causally visible positions)."""
    kv_row = 2 * args.num_kv_heads * args.head_dim * elem
    num_tokens = sum(shape.q_lens)
    nbytes = sum(shape.seq_lens) * kv_row + 2 * num_tokens * args.num_heads * args.head_dim * elem
    nbytes += sum(-(-c // args.block_size) for c in shape.seq_lens) * 4
    visible = sum(q * (c - q) + q * (q + 1) // 2 for q, c in zip(shape.q_lens, shape.seq_lens))
    return nbytes, 4 * visible * args.num_heads * args.head_dim


def bench_attention(shape: Shape, args: argparse.Namespace, peak: float | None) -> Result:
    import triton.testing

    from triode.kernels import torch_attention, triton_attention

    inputs = make_inputs(shape, args, torch.device("cuda"))
    q, k_cache = inputs[0], inputs[1]
    plan = torch_attention.build_plan(inputs[4], inputs[5], inputs[3], k_cache)
    out = triton_attention.paged_attention(*inputs)
    expected = torch_attention.paged_attention(*inputs, plan=plan)
    err = (out.float() - expected.float()).abs().max().item()
    t_ms = triton.testing.do_bench(
        lambda: triton_attention.paged_attention(*inputs), rep=args.rep_ms, return_mode="median"
    )
    r_ms = triton.testing.do_bench(
        lambda: torch_attention.paged_attention(*inputs, plan=plan),
        rep=args.rep_ms,
        return_mode="median",
    )
    nbytes, flops = attention_cost(shape, args, q.element_size())
    return _result("paged_attention", shape.name, t_ms, r_ms, nbytes, flops, peak, err)


def bench_cache_write(num_tokens: int, args: argparse.Namespace, peak: float | None) -> Result:
    import triton.testing

    from triode.kernels import torch_attention, triton_cache

    dtype, device = DTYPES[args.dtype], torch.device("cuda")
    kvh, d, bs = args.num_kv_heads, args.head_dim, args.block_size
    num_blocks = max(4096, 2 * -(-num_tokens // bs))
    k_cache = torch.zeros(num_blocks, bs, kvh, d, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    key = torch.randn(num_tokens, kvh, d, dtype=dtype, device=device)
    value = torch.randn_like(key)
    slots = torch.randperm(num_blocks * bs, device=device)[:num_tokens]
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    triton_cache.write_kv_cache(key, value, k_cache, v_cache, slots)
    torch_attention.write_kv_cache(key, value, k_ref, v_ref, slots)
    err = max((k_cache - k_ref).abs().max().item(), (v_cache - v_ref).abs().max().item())
    t_ms = triton.testing.do_bench(
        lambda: triton_cache.write_kv_cache(key, value, k_cache, v_cache, slots),
        rep=args.rep_ms,
        return_mode="median",
    )
    r_ms = triton.testing.do_bench(
        lambda: torch_attention.write_kv_cache(key, value, k_cache, v_cache, slots),
        rep=args.rep_ms,
        return_mode="median",
    )
    nbytes = 2 * 2 * key.numel() * key.element_size() + slots.numel() * 8  # read + write K and V
    return _result("write_kv_cache", f"{num_tokens} tokens", t_ms, r_ms, nbytes, 0, peak, err)


def _result(kernel, shape, t_ms, r_ms, nbytes, flops, peak, err) -> Result:
    tbps = nbytes / (t_ms * 1e-3) / 1e12
    return Result(
        kernel=kernel,
        shape=shape,
        triton_us=t_ms * 1e3,
        torch_us=r_ms * 1e3,
        bytes_moved=nbytes,
        triton_tbps=tbps,
        peak_fraction=tbps / peak if peak else None,
        triton_tflops=flops / (t_ms * 1e-3) / 1e12,
        max_abs_err=err,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peak-tbps", type=float, default=None, help="card DRAM bandwidth, TB/s (default: by name)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--num-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--rep-ms", type=int, default=200, help="timing budget per measurement")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            "kernels.bench: no CUDA device here; the Triton kernels are benchmarked on a GPU only."
        )
        return 0
    name = torch.cuda.get_device_name()
    peak = args.peak_tbps or lookup_peak_tbps(name)
    print(
        f"{name}: peak {f'{peak} TB/s' if peak else 'unknown (pass --peak-tbps)'}; {args.dtype}, "
        f"H={args.num_heads} KVH={args.num_kv_heads} D={args.head_dim} block={args.block_size}"
    )
    results = [bench_attention(s, args, peak) for s in default_shapes()]
    results += [bench_cache_write(n, args, peak) for n in (256, 8192)]
    print(
        f"{'kernel':<16}{'shape':<40}{'triton us':>11}{'torch us':>11}{'speedup':>9}"
        f"{'TB/s':>7}{'of peak':>9}{'TFLOP/s':>9}{'max err':>10}"
    )
    for r in results:
        frac = f"{r.peak_fraction:.0%}" if r.peak_fraction is not None else "-"
        print(
            f"{r.kernel:<16}{r.shape:<40}{r.triton_us:>11.1f}{r.torch_us:>11.1f}"
            f"{r.torch_us / r.triton_us:>8.1f}x{r.triton_tbps:>7.2f}{frac:>9}"
            f"{r.triton_tflops:>9.1f}{r.max_abs_err:>10.2e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": name, "peak_tbps": peak, "results": [asdict(r) for r in results]},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
