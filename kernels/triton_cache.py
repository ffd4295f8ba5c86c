"""Triton KV-cache write: scatter this step's key/value rows into the paged caches.

Same semantics as `kernels.reference.write_kv_cache`. One program stores one token's
[KVH, D] key and value tiles at its flat slot (block * block_size + offset); slot -1 marks a
padding token and is skipped. Slots are trusted to be in range: the engine's block manager
hands them out.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triode.kernels.triton_utils import KernelLaunch, check_device, next_power_of_2


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_kcd,
    stride_vcb,
    stride_vcs,
    stride_vch,
    stride_vcd,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE

    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    mask = (heads < NUM_KV_HEADS)[:, None] & (dims < HEAD_DIM)[None, :]
    src_k = key_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :] * stride_kd
    src_v = value_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :] * stride_vd
    dst_k = (
        k_cache_ptr
        + block * stride_kcb
        + offset * stride_kcs
        + heads[:, None] * stride_kch
        + dims[None, :] * stride_kcd
    )
    dst_v = (
        v_cache_ptr
        + block * stride_vcb
        + offset * stride_vcs
        + heads[:, None] * stride_vch
        + dims[None, :] * stride_vcd
    )
    k = tl.load(src_k, mask=mask)
    v = tl.load(src_v, mask=mask)
    tl.store(dst_k, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(dst_v, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store key/value [T, KVH, D] at flat slots (block * block_size + offset); slot -1 = skip."""
    if key.dim() != 3 or key.shape != value.shape:
        raise ValueError(
            f"key and value must both be [T, KVH, D], got {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError(
            f"k_cache and v_cache must both be [blocks, block_size, KVH, D] of one dtype, got "
            f"{tuple(k_cache.shape)} {k_cache.dtype} and {tuple(v_cache.shape)} {v_cache.dtype}"
        )
    num_tokens, num_kv_heads, head_dim = key.shape
    if tuple(k_cache.shape[2:]) != (num_kv_heads, head_dim):
        raise ValueError(
            f"key rows [{num_kv_heads}, {head_dim}] do not fit cache rows {tuple(k_cache.shape[2:])}"
        )
    if slot_mapping.shape != (num_tokens,) or slot_mapping.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"slot_mapping must be [{num_tokens}] int64, got {tuple(slot_mapping.shape)} "
            f"{slot_mapping.dtype}"
        )
    check_device(_write_kv_cache_kernel, key, value, k_cache, v_cache, slot_mapping)
    if num_tokens == 0:
        return
    prepare_launch(key, value, k_cache, v_cache, slot_mapping).launch()


def prepare_launch(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> KernelLaunch:
    """Grid and arguments of one kernel call (inputs already checked)."""
    num_tokens, num_kv_heads, head_dim = key.shape
    return KernelLaunch(
        kernel=_write_kv_cache_kernel,
        grid=(num_tokens,),
        args=(
            key,
            value,
            k_cache,
            v_cache,
            slot_mapping,
            *key.stride(),
            *value.stride(),
            *k_cache.stride(),
            *v_cache.stride(),
        ),
        constexprs=dict(
            NUM_KV_HEADS=num_kv_heads,
            HEAD_DIM=head_dim,
            HEADS_PAD=next_power_of_2(num_kv_heads),
            HEAD_DIM_PAD=next_power_of_2(head_dim),
            BLOCK_SIZE=k_cache.shape[1],
        ),
        options=dict(num_warps=4 if num_kv_heads * head_dim <= 1024 else 8),
    )
