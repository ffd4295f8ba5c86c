"""The definition of paged attention and the KV-cache write, in plain torch: the oracle that
every kernel (the C decode kernel, the planned torch path, Triton) is tested against. No engine
path runs it.

Layout (shared by every backend):
- q: [T, H, D], the flat varlen batch of new tokens of S sequences, sequence by sequence.
- k_cache, v_cache: [num_blocks, block_size, KVH, D].
- block_tables: [S, max_blocks] int32, logical block -> physical block (padding entries unused).
- cu_seqlens_q: [S+1] int32, sequence s owns q[cu_seqlens_q[s]:cu_seqlens_q[s+1]].
- seq_lens: [S] int32, context length of each sequence *including* its new tokens. The new tokens
  sit at the end of the context, so new token i of sequence s is at position
  seq_lens[s] - q_len[s] + i and attends causally to positions 0..that position.
- H is a multiple of KVH (grouped-query attention: query head h reads KV head h // (H // KVH)).
- slot_mapping: [T] flat cache slot (block * block_size + offset) of each new token; -1 = padding.
"""

from __future__ import annotations

import torch


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store key/value [T, KVH, D] at their slots, token by token; slot -1 writes nothing."""
    block_size = k_cache.shape[1]
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            k_cache[slot // block_size, slot % block_size] = key[token]
            v_cache[slot // block_size, slot % block_size] = value[token]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its whole paged context: [T, H, D],
    one sequence at a time: gather its context, mask, softmax (float32 maths)."""
    num_heads = q.shape[1]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for s, ctx in enumerate(seq_lens.tolist()):
        start, end = cu[s], cu[s + 1]
        if end == start:
            continue
        positions = torch.arange(ctx, device=q.device)
        blocks = block_tables[s, positions // block_size].long()
        k = k_cache[blocks, positions % block_size].float()  # [ctx, KVH, D]
        v = v_cache[blocks, positions % block_size].float()
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, ctx, D]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)
        qs = q[start:end].float().transpose(0, 1)  # [H, q_len, D]
        query_pos = torch.arange(ctx - (end - start), ctx, device=q.device)
        mask = positions[None, :] <= query_pos[:, None]  # [q_len, ctx]
        scores = (qs @ k.transpose(1, 2)) * scale
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out[start:end] = (probs @ v).transpose(0, 1).to(q.dtype)
    return out


def naive_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The definition, written as plainly as possible (float64 maths); for tests only."""
    num_heads = q.shape[1]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    for s, ctx in enumerate(seq_lens.tolist()):
        start, end = cu[s], cu[s + 1]
        q_len = end - start
        positions = torch.arange(ctx)
        blocks = block_tables[s, positions // block_size].long()
        k = k_cache[blocks, positions % block_size].double()  # [ctx, KVH, D]
        v = v_cache[blocks, positions % block_size].double()
        for i in range(q_len):
            pos = ctx - q_len + i
            for h in range(num_heads):
                kv = h // group
                scores = (k[: pos + 1, kv] @ q[start + i, h].double()) * scale
                probs = torch.softmax(scores, dim=0)
                out[start + i, h] = (probs @ v[: pos + 1, kv]).to(q.dtype)
    return out
