"""The Triton KV-cache write against the torch reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.conftest import DEVICE
from triode.kernels import reference

pytestmark = pytest.mark.usefixtures("triton_kernels")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def write_both(key, value, slots, cache_shape, cache_dtype):
    """Write with Triton and with the reference into caches that start out alike (random)."""
    from triode.kernels import triton_cache

    gen = torch.Generator().manual_seed(7)
    k_ref = torch.randn(cache_shape, generator=gen).to(DEVICE, cache_dtype)
    v_ref = torch.randn(cache_shape, generator=gen).to(DEVICE, cache_dtype)
    k_tri, v_tri = k_ref.clone(), v_ref.clone()
    reference.write_kv_cache(key, value, k_ref, v_ref, slots)
    triton_cache.write_kv_cache(key, value, k_tri, v_tri, slots)
    return (k_tri, v_tri), (k_ref, v_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(2, 64), (3, 48), (1, 128)])
def test_scattered_slots_with_padding(dtype, block_size, num_kv_heads, head_dim) -> None:
    num_blocks, num_tokens = 6, 23
    gen = torch.Generator().manual_seed(block_size + head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[0, 5, 22]] = -1  # padding tokens
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    (k, v), (k_ref, v_ref) = write_both(
        key, value, slots.to(DEVICE), (num_blocks, block_size, num_kv_heads, head_dim), dtype
    )
    # A pure copy: bit for bit, including the untouched slots (padding skipped, not zeroed).
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_strided_views_of_a_fused_projection() -> None:
    """The engine passes k and v as views into one qkv tensor; strides must be honoured."""
    num_tokens, num_heads, num_kv_heads, head_dim = 9, 4, 2, 32
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim).to(DEVICE, torch.float16)
    key = qkv[:, num_heads : num_heads + num_kv_heads]
    value = qkv[:, num_heads + num_kv_heads :]
    assert not key.is_contiguous()
    slots = torch.tensor([3, 4, 5, 6, 40, 41, -1, 17, 0], device=DEVICE)
    (k, v), (k_ref, v_ref) = write_both(
        key, value, slots, (4, 16, num_kv_heads, head_dim), torch.float16
    )
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_casts_to_cache_dtype_and_accepts_int32_slots() -> None:
    key = torch.randn(5, 2, 16).to(DEVICE)
    value = torch.randn(5, 2, 16).to(DEVICE)
    slots = torch.tensor([7, -1, 0, 31, 12], dtype=torch.int32, device=DEVICE)
    (k, v), (k_ref, v_ref) = write_both(key, value, slots, (2, 16, 2, 16), torch.bfloat16)
    # The interpreter truncates fp32 -> bf16 where the GPU rounds to nearest: one bf16 step.
    torch.testing.assert_close(k.float(), k_ref.float(), atol=0, rtol=2**-7)
    torch.testing.assert_close(v.float(), v_ref.float(), atol=0, rtol=2**-7)


def test_rejects_bad_inputs() -> None:
    from triode.kernels import triton_cache

    key = torch.randn(4, 2, 16, device=DEVICE)
    cache = torch.zeros(2, 16, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="slot_mapping"):
        triton_cache.write_kv_cache(
            key, key, cache, cache.clone(), torch.zeros(3, dtype=torch.int64, device=DEVICE)
        )
    with pytest.raises(ValueError, match="do not fit"):
        triton_cache.write_kv_cache(
            key,
            key,
            cache[:, :, :1],
            cache[:, :, :1].clone(),
            torch.zeros(4, dtype=torch.int64, device=DEVICE),
        )
