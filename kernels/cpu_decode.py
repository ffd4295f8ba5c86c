"""The CPU decode kernel (kernels/cpu/paged_decode.c): built with the system C compiler on first
use (kernels.cpu_build), cached, and called through ctypes.

The KV cache may be float32, bfloat16 or float16 (one C entry point each, chosen from the cache
tensors' dtype); q, out and the arithmetic are float32 in every case.

Backend "cpu" = this kernel for one-token (decode) sequences, which read the paged cache in
place, plus the planned torch path for prompt chunks (where attention is compute-bound and
torch's flash attention does well). Without a C compiler, `is_available()` is False and the
engine keeps the pure-torch backend.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache

import torch

from triode.kernels.cpu_build import build
from triode.kernels.torch_attention import AttentionPlan, build_plan, prefill_attention

logger = logging.getLogger(__name__)

# NOTE: -ffast-math applies to the compile step only (kernels.cpu_build links apart, so the
# library does not carry crtfastmath.o, which would switch on flush-to-zero process-wide).
# It lets GCC vectorize expf through glibc's vector math (declared when __FAST_MATH__ is set).
_EXTRA_FLAGS = ("-ffast-math",)


# The entry point for each KV-cache dtype (one signature; the caches' element type differs).
ENTRY_POINTS = {
    torch.float32: "triode_paged_decode_f32",
    torch.bfloat16: "triode_paged_decode_bf16",
    torch.float16: "triode_paged_decode_f16",
}


@cache
def load_library() -> ctypes.CDLL | None:
    """Compile (once per CPU and source version) and load the kernel; None if impossible."""
    lib = build("paged_decode.c", _EXTRA_FLAGS)
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name in ENTRY_POINTS.values():
        fn = getattr(lib, name)
        fn.argtypes = [
            ptr, i64, i64,  # q, strides
            ptr, ptr, i64, i64, i64,  # caches, strides (in elements)
            ptr, i64,  # block tables
            ptr, ptr, ptr, i64,  # token index, seq index, seq lens, number of items
            ptr, i64, i64,  # out, strides
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float,
        ]  # fmt: skip
        fn.restype = ctypes.c_int
    return lib


def decode_function(lib: ctypes.CDLL, dtype: torch.dtype) -> ctypes._CFuncPtr:
    """The entry point of `lib` (load_library()) for a KV cache of `dtype`, argtypes set: what
    paged_decode calls, and the pointer the fused decode step calls (cpu_decode_step's
    function_address)."""
    name = ENTRY_POINTS.get(dtype)
    if name is None:
        supported = ", ".join(str(d).removeprefix("torch.") for d in ENTRY_POINTS)
        raise ValueError(f"the CPU decode kernel takes {supported} KV caches, not {dtype}")
    return getattr(lib, name)


def is_available() -> bool:
    return load_library() is not None


def paged_decode(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    token_index: torch.Tensor,
    seq_index: torch.Tensor,
    scale: float,
) -> None:
    """out[token_index[i]] = attention of q[token_index[i]] over sequence seq_index[i]'s context.

    q and out are float32; the caches float32, bfloat16 or float16 (both the same dtype)."""
    lib = load_library()
    if lib is None:
        raise RuntimeError("the CPU decode kernel is not available (no C compiler?)")
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, cache_dim = k_cache.shape
    if q.dtype != torch.float32 or out.dtype != torch.float32:
        raise TypeError("the CPU decode kernel takes float32 q and out")
    if v_cache.dtype != k_cache.dtype:
        raise ValueError(f"K and V caches differ in dtype ({k_cache.dtype}, {v_cache.dtype})")
    kernel = decode_function(lib, k_cache.dtype)
    if q.stride(2) != 1 or out.stride(2) != 1 or cache_dim != head_dim:
        raise ValueError("q/out rows must be contiguous and match the cache head_dim")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("caches must be contiguous")
    if num_heads % num_kv_heads:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    tables = block_tables if block_tables.dtype == torch.int32 else block_tables.int()
    tables = tables.contiguous()
    lens = seq_lens if seq_lens.dtype == torch.int32 else seq_lens.int()
    lens = lens.contiguous()
    token_index = token_index.to(torch.int64).contiguous()
    seq_index = seq_index.to(torch.int64).contiguous()
    rc = kernel(
        q.data_ptr(), q.stride(0), q.stride(1),
        k_cache.data_ptr(), v_cache.data_ptr(),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        tables.data_ptr(), tables.stride(0),
        token_index.data_ptr(), seq_index.data_ptr(), lens.data_ptr(), token_index.numel(),
        out.data_ptr(), out.stride(0), out.stride(1),
        num_heads, num_kv_heads, head_dim, block_size, float(scale),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"CPU decode kernel failed (code {rc})")


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    plan: AttentionPlan | None = None,
) -> torch.Tensor:
    """Same contract as kernels.torch_attention.paged_attention; decode tokens go through C."""
    if plan is None or (plan.decode_token_index is None and plan.decode_groups):
        plan = build_plan(cu_seqlens_q, seq_lens, block_tables, k_cache, fused_decode=True)
    out = torch.empty_like(q)
    if plan.decode_token_index is not None:
        paged_decode(
            out, q, k_cache, v_cache, block_tables, seq_lens,
            plan.decode_token_index, plan.decode_seq_index, scale,
        )  # fmt: skip
    prefill_attention(out, q, k_cache, v_cache, plan, scale)
    return out
