"""Triton paged attention over a flat varlen batch: prefill chunks with cached context, and decode.

Same layout and semantics as `kernels.reference.paged_attention` (read its docstring). One
program handles one tile of a sequence's new tokens for one KV head: the tile's rows are
(token, query head) pairs of the `group` query heads sharing that KV head, so each K/V tile is
read once for the whole group (GQA). It streams the sequence's context through the block table
in `BLOCK_N`-position tiles with an online softmax, stopping at the tile's last causal position.

The grid is sized from tensor shapes alone (no host sync): program `b` of axis 0 belongs to the
sequence `s` whose first tile index `cu_seqlens_q[s] // BLOCK_Q + s` is the largest one <= b.
Those start indices never overlap and stay below `T // BLOCK_Q + S`, so that is the grid size;
programs past the end of their sequence's tokens return at once.

NOTE: no split-K decode variant. With S sequences and KVH KV heads the decode grid has S * KVH
programs (e.g. 64 * 8 = 512 on a 132-SM H100), which already fills the card; split-K would only
pay for small batches of very long contexts, and it is untested on a GPU here, so it waits for a
measurement (see `python -m triode.kernels.bench`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from triode.kernels.triton_utils import KernelLaunch, check_device, is_interpreted, next_power_of_2

_LOG2E = 1.4426950408889634
# Context positions streamed per step; a multiple or a fraction of the cache block size.
_BLOCK_N = 64
# Rows (token x query head) of a prefill tile; decode-only batches use the 16-row minimum.
_PREFILL_BLOCK_M = 64
_MIN_DOT = 16  # tl.dot needs at least 16 in each dimension
_SEQ_CHUNK = 64  # sequences scanned per step when a program looks up its sequence


@triton.jit
def _paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    block_tables_ptr,
    cu_seqlens_q_ptr,
    seq_lens_ptr,
    scale_log2,
    num_seqs,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_ot,
    stride_oh,
    stride_od,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_vd,
    stride_bts,
    stride_btb,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEQ_CHUNK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    tile_id = tl.program_id(0)
    kv_head = tl.program_id(1)

    # Which sequence owns this tile: count the sequences whose first tile index is <= tile_id.
    num_owned = 0
    for s0 in range(0, num_seqs, SEQ_CHUNK):
        seqs = s0 + tl.arange(0, SEQ_CHUNK)
        starts = tl.load(cu_seqlens_q_ptr + seqs, mask=seqs < num_seqs, other=0)
        first_tile = starts // BLOCK_Q + seqs
        num_owned += tl.sum(((first_tile <= tile_id) & (seqs < num_seqs)).to(tl.int32), axis=0)
    seq = num_owned - 1
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    q_tile = tile_id - (q_start // BLOCK_Q + seq)
    if q_tile * BLOCK_Q >= q_len:
        return
    ctx_len = tl.load(seq_lens_ptr + seq)
    num_cached = ctx_len - q_len

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    token = q_tile * BLOCK_Q + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    row_mask = (token < q_len) & (head_in_group < GROUP)
    head = kv_head * GROUP + head_in_group
    q_pos = num_cached + token  # causal limit of each row
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_mask = dims < HEAD_DIM

    q_rows = (q_start + token).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(
        q_ptr + q_rows[:, None] + dims[None, :] * stride_qd,
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )
    q = q.to(k_cache_ptr.dtype.element_ty)
    if DOT_FP32:
        q = q.to(tl.float32)

    # NOTE: a finite floor, not -inf, so rows that are fully masked (padding) never give NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # The last row of this tile sees positions up to num_cached + its token index.
    kv_end = tl.minimum(ctx_len, num_cached + (q_tile + 1) * BLOCK_Q)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bts
    for n0 in range(0, kv_end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        pos_mask = pos < kv_end
        # int64 before the stride multiply: block id * stride overflows int32 on large caches.
        block = tl.load(table_row + (pos // BLOCK_SIZE) * stride_btb, mask=pos_mask, other=0)
        block = block.to(tl.int64)
        in_block = pos % BLOCK_SIZE
        k_off = block * stride_kb + in_block * stride_ks + kv_head * stride_kh
        v_off = block * stride_vb + in_block * stride_vs + kv_head * stride_vh
        kv_mask = pos_mask[None, :] & dim_mask[:, None]
        k = tl.load(
            k_cache_ptr + k_off[None, :] + dims[:, None] * stride_kd, mask=kv_mask, other=0.0
        )
        v = tl.load(
            v_cache_ptr + v_off[:, None] + dims[None, :] * stride_vd,
            mask=pos_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            scores = tl.dot(q, k, input_precision="ieee")
        else:
            scores = tl.dot(q, k)
        scores = scores * scale_log2
        visible = pos_mask[None, :] & (pos[None, :] <= q_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DOT_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / tl.maximum(l_i, 1.0e-30)[:, None]
    out_rows = (q_start + token).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(
        out_ptr + out_rows[:, None] + dims[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & dim_mask[None, :],
    )


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    block_n: int | None = None,
    block_m: int | None = None,
) -> torch.Tensor:
    """Causal paged attention of each sequence's new tokens over its whole context: [T, H, D].

    `block_n` / `block_m` override the tile sizes (context positions per step, and rows of
    token x query head per program); tests use them to cover tiles smaller and larger than a
    cache block.
    """
    _check_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens)
    out = torch.empty_like(q)
    if q.shape[0] == 0 or seq_lens.shape[0] == 0:
        return out
    interpreted = is_interpreted(_paged_attention_kernel)
    prepare_launch(
        q,
        k_cache,
        v_cache,
        block_tables,
        cu_seqlens_q,
        seq_lens,
        scale,
        out,
        block_n=block_n,
        block_m=block_m,
        interpreted=interpreted,
    ).launch()
    return out


def prepare_launch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    *,
    block_n: int | None = None,
    block_m: int | None = None,
    interpreted: bool = False,
) -> KernelLaunch:
    """Tile sizes, grid and arguments of one kernel call (inputs already checked)."""
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = seq_lens.shape[0]
    group = num_heads // num_kv_heads
    group_pad = next_power_of_2(group)
    if block_m is None:
        # Shapes alone tell a decode-only batch (one token per sequence) without a host sync.
        block_m = _MIN_DOT if num_tokens == num_seqs else _PREFILL_BLOCK_M
    block_m = max(next_power_of_2(block_m), group_pad, _MIN_DOT)
    block_q = block_m // group_pad
    block_n = max(next_power_of_2(block_n or _BLOCK_N), _MIN_DOT)
    head_dim_pad = max(next_power_of_2(head_dim), _MIN_DOT)
    return KernelLaunch(
        kernel=_paged_attention_kernel,
        grid=(num_tokens // block_q + num_seqs, num_kv_heads),
        args=(
            q,
            k_cache,
            v_cache,
            out,
            block_tables,
            cu_seqlens_q,
            seq_lens,
            scale * _LOG2E,
            num_seqs,
            *q.stride(),
            *out.stride(),
            *k_cache.stride(),
            *v_cache.stride(),
            *block_tables.stride(),
        ),
        constexprs=dict(
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            BLOCK_SIZE=block_size,
            GROUP=group,
            GROUP_PAD=group_pad,
            BLOCK_Q=block_q,
            BLOCK_N=block_n,
            SEQ_CHUNK=_SEQ_CHUNK,
            # The interpreter's tl.dot is wrong on 16-bit inputs, and fp32 caches want exact
            # fp32 products rather than TF32.
            DOT_FP32=interpreted or k_cache.dtype == torch.float32,
        ),
        options=dict(num_warps=4 if block_m * head_dim_pad <= 64 * 64 else 8),
    )


def _check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
) -> None:
    if q.dim() != 3 or k_cache.dim() != 4:
        raise ValueError(
            f"expected q [T, H, D] and k_cache [blocks, block_size, KVH, D], got "
            f"{tuple(q.shape)} and {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} {k_cache.dtype} and v_cache "
            f"{tuple(v_cache.shape)} {v_cache.dtype} differ"
        )
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and cache ({k_cache.shape[3]}) differ")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if not math.log2(k_cache.shape[1]).is_integer():
        raise ValueError(f"block_size must be a power of two, got {k_cache.shape[1]}")
    for name, t in (("q", q), ("k_cache", k_cache)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    num_seqs = seq_lens.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables must be [{num_seqs}, max_blocks], got {tuple(block_tables.shape)}"
        )
    if cu_seqlens_q.shape != (num_seqs + 1,) or seq_lens.dim() != 1:
        raise ValueError(
            f"cu_seqlens_q must be [S+1] and seq_lens [S], got {tuple(cu_seqlens_q.shape)} "
            f"and {tuple(seq_lens.shape)}"
        )
    for name, t in (
        ("block_tables", block_tables),
        ("cu_seqlens_q", cu_seqlens_q),
        ("seq_lens", seq_lens),
    ):
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")
    if not (cu_seqlens_q.is_contiguous() and seq_lens.is_contiguous()):
        raise ValueError("cu_seqlens_q and seq_lens must be contiguous")
    check_device(_paged_attention_kernel, q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens)
