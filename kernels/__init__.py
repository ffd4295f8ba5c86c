"""Attention and KV-cache kernels.

`paged_attention` and `write_kv_cache` take a `backend`: "torch" (the reference in
`kernels.reference`, the ground truth and the portable CPU path), "cpu" (the torch reference
with decode tokens handled by a small C kernel compiled on first use, `kernels.cpu_decode`; the
default on CPUs with a C compiler) or "triton" (CUDA, or the CPU under TRITON_INTERPRET=1). The caller picks the backend once, at engine start; nothing here looks at
the hardware at import time.

Modules: `reference` (torch), `triton_attention` and `triton_cache` (the Triton kernels, imported
lazily so that importing `kernels` never imports Triton), `compile_check` (compile them for a GPU
target on any machine) and `bench` (GPU timings against the reference).
"""

from __future__ import annotations

import torch

from triode.kernels import reference
from triode.kernels.reference import AttentionPlan, build_plan

BACKENDS = ("torch", "cpu", "triton")

__all__ = ["BACKENDS", "AttentionPlan", "build_plan", "paged_attention", "write_kv_cache"]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    backend: str = "torch",
    plan: AttentionPlan | None = None,
) -> torch.Tensor:
    """Causal paged attention over a flat varlen batch; see `kernels.reference` for the layout."""
    if backend == "torch":
        return reference.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, plan=plan
        )
    if backend == "cpu":
        from triode.kernels import cpu_decode

        return cpu_decode.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, plan=plan
        )
    if backend == "triton":
        from triode.kernels import triton_attention

        return triton_attention.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale
        )
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    backend: str = "torch",
) -> None:
    """Write new K/V [T, KVH, D] into the paged caches at `slot_mapping` (-1 = padding, skipped)."""
    if backend in ("torch", "cpu"):
        return reference.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    if backend == "triton":
        from triode.kernels import triton_cache

        return triton_cache.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
