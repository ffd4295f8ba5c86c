"""AttentionMetadata: everything a layer needs to read and write the paged KV cache this step,
and the choice of the attention backend (once, at engine start).

The model runner builds one AttentionMetadata per step and passes it explicitly to every layer
(no global context). The backend's per-step plan is built here once, not once per layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from triode.kernels.backends import AttentionBackend, CpuBackend, TorchBackend, make_backend

logger = logging.getLogger(__name__)


def resolve_attention_backend(
    choice: str, device: torch.device, cache_dtype: torch.dtype
) -> AttentionBackend:
    """The backend object for `choice` ("auto", "torch", "cpu", "triton") over a KV cache of
    `cache_dtype`. auto: Triton on CUDA; on the CPU the C decode kernel when it builds and reads
    caches of that dtype, else planned torch. Building the C kernel happens here, at engine
    start, never when a config is read."""
    if choice == "cpu":
        return CpuBackend(cache_dtype)
    if choice != "auto":
        return make_backend(choice)
    if device.type == "cuda":
        return make_backend("triton")
    try:
        return CpuBackend(cache_dtype)
    except RuntimeError as exc:
        logger.info("%s; attention runs in torch", exc)
    return TorchBackend()


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64, flat cache slot of each new token (-1 = padding)
    block_tables: torch.Tensor  # [S, max_blocks] int32
    cu_seqlens_q: torch.Tensor  # [S+1] int32
    seq_lens: torch.Tensor  # [S] int32, context length including the new tokens
    max_seq_len: int
    max_q_len: int
    backend: AttentionBackend
    plan: Any = None

    @classmethod
    def build(
        cls,
        q_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        slot_mapping: list[int],
        block_size: int,
        kv_bytes_per_token: int,
        device: torch.device,
        backend: AttentionBackend,
    ) -> AttentionMetadata:
        max_blocks = max(len(t) for t in block_tables)
        padded = [t + [0] * (max_blocks - len(t)) for t in block_tables]
        cu = [0]
        for n in q_lens:
            cu.append(cu[-1] + n)
        tables = torch.tensor(padded, dtype=torch.int32)
        meta = cls(
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64),
            block_tables=tables,
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            max_seq_len=max(seq_lens),
            max_q_len=max(q_lens),
            backend=backend,
        )
        if device.type != "cpu":
            meta.slot_mapping = meta.slot_mapping.to(device, non_blocking=True)
            meta.block_tables = meta.block_tables.to(device, non_blocking=True)
            meta.cu_seqlens_q = meta.cu_seqlens_q.to(device, non_blocking=True)
            meta.seq_lens = meta.seq_lens.to(device, non_blocking=True)
        meta.plan = backend.plan(
            q_lens, seq_lens, meta.block_tables, block_size, kv_bytes_per_token
        )
        return meta

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Store this step's k/v [T, KVH, D] in the cache, then attend q [T, H, D] over it."""
        self.backend.write_kv_cache(k, v, k_cache, v_cache, self.slot_mapping)
        return self.backend.paged_attention(
            q,
            k_cache,
            v_cache,
            self.block_tables,
            self.cu_seqlens_q,
            self.seq_lens,
            scale,
            self.plan,
        )
