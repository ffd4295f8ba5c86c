"""Attention and KV-cache kernels.

`backends` holds the attention backends as objects ("torch": the planned torch path,
`torch_attention`; "cpu": that plus a small C decode kernel compiled on first use,
`cpu_decode`; "triton": CUDA, or the CPU under TRITON_INTERPRET=1). The engine picks one at
start (engine.runner.attention); nothing here looks at the hardware at import time.
`reference` is the definition every backend is tested against; no engine path runs it.
`cpu_quant` holds the CPU weight-only quantized matmuls (engine.quant uses them).

Modules imported lazily, so that importing `kernels` never imports Triton nor compiles C:
`triton_attention`, `triton_cache`, `compile_check` (compile them for a GPU target on any
machine), `bench` (GPU timings), `cpu_decode`, `cpu_quant`.
"""

from __future__ import annotations

import torch

from triode.kernels.backends import BACKENDS, AttentionBackend, make_backend

__all__ = ["BACKENDS", "AttentionBackend", "make_backend", "paged_attention", "write_kv_cache"]


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
) -> torch.Tensor:
    """One call on a backend by name (tests and tools; the engine holds a backend object)."""
    return make_backend(backend).paged_attention(
        q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale
    )


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    backend: str = "torch",
) -> None:
    """Write new K/V [T, KVH, D] at `slot_mapping` (-1 = padding, skipped) on a named backend."""
    make_backend(backend).write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
