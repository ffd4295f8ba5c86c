"""Attention backends as objects: the engine resolves one at start and every layer calls its
methods; no backend name is looked at per call, and nothing compiles before a backend is made.

- `TorchBackend` ("torch"): the planned torch path (`kernels.torch_attention`); any device.
- `CpuBackend` ("cpu"): decode tokens through the C kernel (`kernels.cpu_decode`, built when
  the backend is made), prompt chunks through the planned torch path; caches of the dtypes the
  C kernel has an entry point for (`cpu_decode_reads`).
- `TritonBackend` ("triton"): the Triton kernels (CUDA, or the CPU under TRITON_INTERPRET=1).

`kernels.reference` is none of them: it is the definition the tests compare them with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from triode.kernels import torch_attention


class AttentionBackend(ABC):
    """Paged attention and the KV-cache write for one engine (layout: `kernels.reference`)."""

    name: ClassVar[str]

    def plan(
        self,
        q_lens: list[int],
        seq_lens: list[int],
        block_tables: torch.Tensor,
        block_size: int,
        kv_bytes_per_token: int,
    ) -> Any:
        """Per-step work shared by every layer (None when the backend needs none)."""
        return None

    @abstractmethod
    def write_kv_cache(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None: ...

    @abstractmethod
    def paged_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
        plan: Any = None,
    ) -> torch.Tensor: ...


class TorchBackend(AttentionBackend):
    name = "torch"
    fused_decode = False

    def plan(self, q_lens, seq_lens, block_tables, block_size, kv_bytes_per_token):
        return torch_attention.AttentionPlan(
            q_lens, seq_lens, block_tables, block_size, kv_bytes_per_token, self.fused_decode
        )

    def write_kv_cache(self, key, value, k_cache, v_cache, slot_mapping):
        torch_attention.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)

    def paged_attention(self, q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale,
                        plan=None):  # fmt: skip
        return torch_attention.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, plan=plan
        )


def cpu_decode_reads(cache_dtype: torch.dtype) -> bool:
    """Whether the C decode kernel builds here and has an entry point for this cache dtype."""
    from triode.kernels import cpu_decode

    lib = cpu_decode.load_library()  # builds the C kernel (once per machine)
    return lib is not None and cache_dtype in cpu_decode.ENTRY_POINTS


class CpuBackend(TorchBackend):
    name = "cpu"
    fused_decode = True

    def __init__(self, cache_dtype: torch.dtype = torch.float32) -> None:
        from triode.kernels import cpu_decode

        if not cpu_decode.is_available():
            raise RuntimeError("the CPU decode kernel is not available (no C compiler?)")
        if not cpu_decode_reads(cache_dtype):
            raise RuntimeError(f"the CPU decode kernel does not read {cache_dtype} KV caches")
        self.cache_dtype = cache_dtype
        self._decode = cpu_decode

    def paged_attention(self, q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale,
                        plan=None):  # fmt: skip
        return self._decode.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, plan=plan
        )


class TritonBackend(AttentionBackend):
    name = "triton"

    def __init__(self) -> None:
        from triode.kernels import triton_attention, triton_cache

        self._attention = triton_attention
        self._cache = triton_cache

    def write_kv_cache(self, key, value, k_cache, v_cache, slot_mapping):
        self._cache.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)

    def paged_attention(self, q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale,
                        plan=None):  # fmt: skip
        return self._attention.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale
        )


BACKENDS: dict[str, type[AttentionBackend]] = {
    "torch": TorchBackend,
    "cpu": CpuBackend,
    "triton": TritonBackend,
}


def make_backend(name: str) -> AttentionBackend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(
            f"unknown attention backend {name!r}; expected one of {tuple(BACKENDS)}"
        ) from None
