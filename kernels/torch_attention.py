"""Paged attention in torch, planned once per step: the CPU production path for prompt chunks,
and for decode tokens where the C decode kernel is not available.

The expensive part on a CPU is reading the cache, so `AttentionPlan` sorts the batch once per
step (not once per layer): sequences decoding one token are batched together, in groups small
enough that their gathered K/V stays in the CPU cache; prompt chunks are done one sequence at a
time with a causal mask offset by their cached context. Layout and semantics: as
`kernels.reference` (the test oracle) documents them.

The cache may hold another dtype than q (a 16-bit cache under a float32 model): the write rounds
K/V to it, and attention runs in the wider of the two (`_compute_dtype`), so float32 queries
never round to 16 bits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Decode sequences per group: keeps a group's gathered K/V (per layer) within a few MiB.
_DECODE_GROUP_BYTES = 4 << 20


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store key/value [T, KVH, D] at flat slots (block * block_size + offset); slot -1 = skip."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    slots = slot_mapping.long()
    if bool((slots < 0).any()):
        keep = slots >= 0
        slots, key, value = slots[keep], key[keep], value[keep]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, value.to(v_cache.dtype))


def _compute_dtype(q: torch.Tensor, cache: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: the wider of q's and the cache's (bf16 with f16: float32).

    NOTE: measured through `prefill_attention` on our 2-core Xeon (AMX, torch 2.13), torch's SDPA
    in bf16 took 1.02-1.36x float32's time for prompts of 32-1024 tokens, and the same over a
    bf16 cache with the gathered K/V converted to float32 0.96-1.12x (float16 alike); float32
    also keeps q and the softmax weights unrounded (BENCHMARKS.md, "16-bit KV cache")."""
    return torch.promote_types(q.dtype, cache.dtype)


@dataclass(slots=True)
class _DecodeGroup:
    token_index: torch.Tensor  # [n] long, rows of q / out
    block_table: torch.Tensor  # [n, num_blocks] long
    mask: torch.Tensor  # [n, 1, 1, L] bool, True where the key is in context
    is_contiguous: bool  # token_index is a contiguous range starting at token_start
    token_start: int


@dataclass(slots=True)
class _PrefillSeq:
    token_start: int
    token_end: int
    context_len: int
    block_ids: torch.Tensor  # [num_blocks] long
    mask: torch.Tensor | None  # [q_len, context_len] bool; None means plain causal


class AttentionPlan:
    """The per-step work split of the torch paged attention, reused by every layer."""

    def __init__(
        self,
        q_lens: list[int],
        seq_lens: list[int],
        block_tables: torch.Tensor,
        block_size: int,
        kv_bytes_per_token: int,
        fused_decode: bool = False,
    ) -> None:
        device = block_tables.device
        tables = block_tables.long()
        self.num_tokens = sum(q_lens)
        self.decode_groups: list[_DecodeGroup] = []
        self.prefills: list[_PrefillSeq] = []
        # For a fused decode kernel (kernels.cpu_decode): every one-token sequence at once.
        self.decode_token_index: torch.Tensor | None = None
        self.decode_seq_index: torch.Tensor | None = None
        decode_seqs: list[int] = []
        token_starts: list[int] = []
        start = 0
        for s, (q_len, ctx) in enumerate(zip(q_lens, seq_lens)):
            token_starts.append(start)
            if q_len == 1:
                decode_seqs.append(s)
            elif q_len > 1:
                nb = -(-ctx // block_size)
                mask = None
                if ctx != q_len:
                    pos_q = torch.arange(ctx - q_len, ctx, device=device)
                    mask = torch.arange(ctx, device=device)[None, :] <= pos_q[:, None]
                self.prefills.append(_PrefillSeq(start, start + q_len, ctx, tables[s, :nb], mask))
            start += q_len
        if decode_seqs and fused_decode:
            self.decode_token_index = torch.tensor([token_starts[s] for s in decode_seqs])
            self.decode_seq_index = torch.tensor(decode_seqs)
        elif decode_seqs:
            self._plan_decode(
                decode_seqs, token_starts, seq_lens, tables, block_size, kv_bytes_per_token
            )

    def _plan_decode(
        self,
        seqs: list[int],
        token_starts: list[int],
        seq_lens: list[int],
        tables: torch.Tensor,
        block_size: int,
        kv_bytes_per_token: int,
    ) -> None:
        # Sort by length so each group pads little; group by the bytes its K/V gather moves.
        order = sorted(seqs, key=lambda s: seq_lens[s])
        device = tables.device
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order):
                padded_len = -(-seq_lens[order[j]] // block_size) * block_size
                if (j - i + 1) * padded_len * kv_bytes_per_token > _DECODE_GROUP_BYTES:
                    break
                j += 1
            group = order[i:j]
            max_len = seq_lens[group[-1]]
            nb = -(-max_len // block_size)
            lens = torch.tensor([seq_lens[s] for s in group], device=device)
            mask = torch.arange(nb * block_size, device=device)[None, :] < lens[:, None]
            tok = [token_starts[s] for s in group]
            is_contiguous = tok == list(range(tok[0], tok[0] + len(tok)))
            self.decode_groups.append(
                _DecodeGroup(
                    token_index=torch.tensor(tok, device=device),
                    block_table=tables[group, :nb],
                    mask=mask[:, None, None, :],
                    is_contiguous=is_contiguous,
                    token_start=tok[0],
                )
            )
            i = j


def build_plan(
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    k_cache: torch.Tensor,
    fused_decode: bool = False,
) -> AttentionPlan:
    """A plan from the kernel arguments (the engine builds it from host lists instead)."""
    cu = cu_seqlens_q.tolist()
    q_lens = [b - a for a, b in itertools.pairwise(cu)]
    block_size, kvh, d = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    kv_bytes_per_token = 2 * kvh * d * k_cache.element_size()
    return AttentionPlan(
        q_lens, seq_lens.tolist(), block_tables, block_size, kv_bytes_per_token, fused_decode
    )


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
    """Causal attention of each sequence's new tokens over its whole paged context: [T, H, D]
    (`plan`: the step's plan, built once for all layers)."""
    if plan is None:
        plan = build_plan(cu_seqlens_q, seq_lens, block_tables, k_cache)
    out = torch.empty_like(q)
    _decode_groups_attention(out, q, k_cache, v_cache, plan, scale)
    prefill_attention(out, q, k_cache, v_cache, plan, scale)
    return out


def _decode_groups_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: AttentionPlan,
    scale: float,
) -> None:
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    dtype = _compute_dtype(q, k_cache)
    for g in plan.decode_groups:
        n, nb = g.block_table.shape
        length = nb * k_cache.shape[1]
        k = k_cache[g.block_table].to(dtype).view(n, length, num_kv_heads, head_dim).transpose(1, 2)
        v = v_cache[g.block_table].to(dtype).view(n, length, num_kv_heads, head_dim).transpose(1, 2)
        if g.is_contiguous:
            qg = q[g.token_start : g.token_start + n]
        else:
            qg = q.index_select(0, g.token_index)
        # One query token: the `group` query heads of a KV head act as its query rows.
        o = F.scaled_dot_product_attention(
            qg.view(n, num_kv_heads, group, head_dim).to(dtype),
            k,
            v,
            attn_mask=g.mask,
            scale=scale,
        )
        o = o.reshape(n, num_heads, head_dim).to(out.dtype)
        if g.is_contiguous:
            out[g.token_start : g.token_start + n] = o
        else:
            out.index_copy_(0, g.token_index, o)


def prefill_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: AttentionPlan,
    scale: float,
) -> None:
    """Attention of the plan's multi-token sequences (prompt chunks), one at a time."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    dtype = _compute_dtype(q, k_cache)
    for p in plan.prefills:
        k = k_cache[p.block_ids].view(-1, num_kv_heads, head_dim)[: p.context_len]
        v = v_cache[p.block_ids].view(-1, num_kv_heads, head_dim)[: p.context_len]
        k, v = k.to(dtype).transpose(0, 1), v.to(dtype).transpose(0, 1)  # [KVH, context, D]
        qs = q[p.token_start : p.token_end].transpose(0, 1).to(dtype)  # [H, q_len, D]
        o = F.scaled_dot_product_attention(
            qs,
            k,
            v,
            attn_mask=p.mask,
            is_causal=p.mask is None,
            scale=scale,
            enable_gqa=group > 1,
        )
        out[p.token_start : p.token_end] = o.transpose(0, 1).to(out.dtype)
