"""Compile every Triton kernel for a GPU target without a GPU: `python -m triode.kernels.compile_check`.

Triton lowers to PTX and runs the `ptxas` bundled in its wheel, so a CPU-only machine can prove
that the kernels compile for, e.g., Hopper (sm_90) — catching what the interpreter never sees:
tile shapes tl.dot rejects, shared-memory overflow, type errors in the lowered IR. Each case is
prepared by the launcher's own `prepare_launch` on small CPU tensors, then specialised exactly as
a real launch would be (16-byte alignment, integers equal to 1 as constants).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class CompiledCase:
    name: str
    num_cubin_bytes: int
    shared_bytes: int
    num_warps: int
    uses_tensor_cores: bool


def _attention_cases() -> Iterator[tuple[str, Callable[[], object]]]:
    from triode.kernels import triton_attention

    # (dtype, head_dim, heads, kv_heads, block_size, decode-only batch)
    shapes = [
        (torch.float16, 128, 32, 8, 16, True),
        (torch.float16, 128, 32, 8, 16, False),
        (torch.bfloat16, 64, 12, 4, 32, True),
        (torch.bfloat16, 128, 8, 1, 16, False),
        (torch.float32, 64, 4, 4, 16, False),
    ]
    for dtype, head_dim, num_heads, num_kv_heads, block_size, is_decode in shapes:
        name = (
            f"paged_attention {str(dtype).removeprefix('torch.')} D={head_dim} "
            f"H={num_heads} KVH={num_kv_heads} block={block_size} "
            f"{'decode' if is_decode else 'prefill'}"
        )

        def prepare(
            dtype=dtype, d=head_dim, h=num_heads, kvh=num_kv_heads, bs=block_size, dec=is_decode
        ):
            num_seqs, q_len = 4, 1 if dec else 8
            q = torch.empty(num_seqs * q_len, h, d, dtype=dtype)
            cache = torch.empty(8, bs, kvh, d, dtype=dtype)
            tables = torch.zeros(num_seqs, 2, dtype=torch.int32)
            cu = torch.arange(num_seqs + 1, dtype=torch.int32) * q_len
            lens = torch.full((num_seqs,), bs, dtype=torch.int32)
            return triton_attention.prepare_launch(
                q, cache, cache, tables, cu, lens, d**-0.5, torch.empty_like(q)
            )

        yield name, prepare


def _cache_cases() -> Iterator[tuple[str, Callable[[], object]]]:
    from triode.kernels import triton_cache

    for dtype, num_kv_heads, head_dim in [(torch.float16, 8, 128), (torch.bfloat16, 3, 64)]:
        name = f"write_kv_cache {str(dtype).removeprefix('torch.')} KVH={num_kv_heads} D={head_dim}"

        def prepare(dtype=dtype, kvh=num_kv_heads, d=head_dim):
            # key/value as strided views into a fused qkv projection, as the engine passes them
            qkv = torch.empty(6, 2 * kvh + 4, d, dtype=dtype)
            cache = torch.empty(4, 16, kvh, d, dtype=dtype)
            slots = torch.zeros(6, dtype=torch.int64)
            return triton_cache.prepare_launch(
                qkv[:, 4 : 4 + kvh], qkv[:, 4 + kvh :], cache, cache, slots
            )

        yield name, prepare


def compile_all(arch: int = 90, warp_size: int = 32) -> list[CompiledCase]:
    """Compile each kernel case for CUDA `arch` (90 = Hopper) and describe the results."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    from triode.kernels.triton_utils import KernelLaunch, is_interpreted

    target = GPUTarget("cuda", arch, warp_size)
    results = []
    for name, prepare in [*_attention_cases(), *_cache_cases()]:
        launch = prepare()
        assert isinstance(launch, KernelLaunch)
        if is_interpreted(launch.kernel):
            raise RuntimeError("TRITON_INTERPRET=1 was set when the kernels were imported")
        arg_names = launch.kernel.arg_names
        signature: dict[str, str] = {}
        constexprs: dict[str, object] = dict(launch.constexprs)
        attrs: dict[tuple[int, ...], list] = {}
        for i, arg in enumerate(launch.args):
            # The same specialisation a JIT launch applies to these argument values.
            kind, spec = native_specialize_impl(CUDABackend, arg, False, True, True)
            if kind == "constexpr":
                constexprs[arg_names[i]] = spec
            elif isinstance(spec, str):
                attrs[(i,)] = CUDABackend.parse_attr(spec)
            signature[arg_names[i]] = kind
        for k in launch.constexprs:
            signature[k] = "constexpr"
        src = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=target, options=dict(launch.options))
        ptx = compiled.asm["ptx"]
        results.append(
            CompiledCase(
                name=name,
                num_cubin_bytes=len(compiled.asm["cubin"]),
                shared_bytes=compiled.metadata.shared,
                num_warps=compiled.metadata.num_warps,
                uses_tensor_cores="mma" in ptx,
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100/H200)"
    )
    args = parser.parse_args(argv)
    # Compiling needs real JIT functions; the interpreter's stand-ins cannot be lowered.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    for case in compile_all(args.arch):
        print(
            f"sm_{args.arch}  {case.name}: cubin {case.num_cubin_bytes} B, shared "
            f"{case.shared_bytes} B, {case.num_warps} warps, "
            f"tensor cores: {'yes' if case.uses_tensor_cores else 'no'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
