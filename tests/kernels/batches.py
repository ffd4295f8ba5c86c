"""Random paged-attention batches with shuffled block tables and poisoned unused cache slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Unused cache slots and padding table entries hold this value: a kernel that reads past a
# sequence's context (or its causal limit) gets scores so large they swamp the softmax.
POISON = 300.0


@dataclass(slots=True)
class PagedBatch:
    q: torch.Tensor  # [T, H, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32
    cu_seqlens_q: torch.Tensor  # [S+1] int32
    seq_lens: torch.Tensor  # [S] int32
    scale: float

    def args(self) -> tuple:
        return (
            self.q,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.cu_seqlens_q,
            self.seq_lens,
            self.scale,
        )


def make_batch(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> PagedBatch:
    """Sequences with `q_lens[s]` new tokens at the end of `seq_lens[s]` context positions, their
    blocks scattered over a shuffled pool (with one spare poisoned block for table padding)."""
    assert len(q_lens) == len(seq_lens) and all(q <= c for q, c in zip(q_lens, seq_lens))
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-c // block_size) for c in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few spare blocks that nothing owns
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, POISON)
    v_cache = torch.full(shape, POISON)
    max_blocks = max(blocks_per_seq, default=0) + 1
    poison_block = num_blocks - 1
    block_tables = torch.full((len(seq_lens), max_blocks), poison_block, dtype=torch.int32)
    order = torch.randperm(num_blocks - 1, generator=gen)
    next_block = 0
    for s, ctx in enumerate(seq_lens):
        ids = order[next_block : next_block + blocks_per_seq[s]]
        next_block += blocks_per_seq[s]
        block_tables[s, : len(ids)] = ids.to(torch.int32)
        for pos in range(0, ctx, block_size):
            n = min(block_size, ctx - pos)
            block = int(ids[pos // block_size])
            k_cache[block, :n] = torch.randn(n, num_kv_heads, head_dim, generator=gen)
            v_cache[block, :n] = torch.randn(n, num_kv_heads, head_dim, generator=gen)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=gen)
    cu = [0]
    for n in q_lens:
        cu.append(cu[-1] + n)
    return PagedBatch(
        q=q.to(device, dtype),
        k_cache=k_cache.to(device, dtype),
        v_cache=v_cache.to(device, dtype),
        block_tables=block_tables.to(device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        scale=head_dim**-0.5,
    )
