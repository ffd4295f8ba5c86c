"""The Triton paged attention against the float64 definition and the torch reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.batches import make_batch
from tests.kernels.conftest import DEVICE, HAS_CUDA
from triode.kernels import reference

pytestmark = pytest.mark.usefixtures("triton_kernels")

# Output tolerances against the float64 definition: the kernel accumulates in fp32, and the
# 16-bit dtypes round q, the probabilities (compiled path) and the output. The interpreter
# rounds fp32 -> bf16 by truncation, hence a full bf16 step.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=2.5e-2, rtol=1.6e-2),
}

# A batch that mixes every case: decode with short and long context, a prompt chunk on top of
# cached context spanning several blocks, a first chunk (no cache), and a chunk whose new
# tokens start mid-block.
MIXED_Q_LENS = [1, 9, 1, 20, 5, 1]
MIXED_SEQ_LENS = [1, 40, 67, 20, 33, 16]


def run_triton(batch, **kwargs) -> torch.Tensor:
    from triode.kernels import triton_attention

    return triton_attention.paged_attention(*batch.args(), **kwargs)


def assert_matches_definition(batch, out: torch.Tensor) -> None:
    expected = reference.naive_paged_attention(
        *(t.cpu() if torch.is_tensor(t) else t for t in batch.args())
    )
    assert out.dtype == batch.q.dtype and out.shape == batch.q.shape
    torch.testing.assert_close(out.cpu().float(), expected.float(), **TOLERANCES[batch.q.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (6, 2), (8, 2), (8, 1)])
def test_mixed_batch_matches_definition(dtype, block_size, num_heads, num_kv_heads) -> None:
    batch = make_batch(
        MIXED_Q_LENS,
        MIXED_SEQ_LENS,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=64,
        block_size=block_size,
        dtype=dtype,
        device=DEVICE,
        seed=block_size + num_heads,
    )
    assert_matches_definition(batch, run_triton(batch))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_agrees_with_torch_reference(dtype) -> None:
    batch = make_batch(
        MIXED_Q_LENS,
        MIXED_SEQ_LENS,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        block_size=16,
        dtype=dtype,
        device=DEVICE,
        seed=1,
    )
    expected = reference.paged_attention(*batch.args())
    torch.testing.assert_close(run_triton(batch).float(), expected.float(), **TOLERANCES[dtype])


@pytest.mark.parametrize("head_dim", [16, 48, 128])
def test_head_dims(head_dim) -> None:
    """Powers of two, and a padded non-power of two (48 -> 64 lanes)."""
    batch = make_batch(
        [3, 1, 1],
        [19, 40, 7],
        num_heads=4,
        num_kv_heads=1,
        head_dim=head_dim,
        block_size=16,
        device=DEVICE,
        seed=head_dim,
    )
    assert_matches_definition(batch, run_triton(batch))


@pytest.mark.parametrize(
    "block_m,block_n,block_size",
    [
        (16, 16, 32),  # context tiles of half a cache block
        (16, 64, 16),  # context tiles spanning four cache blocks
        (64, 32, 32),  # one query tile covers a whole chunk
        (128, 16, 16),
    ],
)
def test_tile_sizes(block_m, block_n, block_size) -> None:
    # 37 new tokens with GQA 2 span several query tiles of 8-64 tokens; tiles straddle the
    # boundary between cached and new positions.
    batch = make_batch(
        [37, 1, 12],
        [50, 70, 12],
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        block_size=block_size,
        device=DEVICE,
        seed=block_m + block_n,
    )
    assert_matches_definition(batch, run_triton(batch, block_m=block_m, block_n=block_n))


def test_strided_q_and_block_table_views() -> None:
    """q as a view into a fused qkv projection and a column slice of a wider block table."""
    batch = make_batch(
        MIXED_Q_LENS,
        MIXED_SEQ_LENS,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        block_size=16,
        device=DEVICE,
        seed=5,
    )
    expected = run_triton(batch)
    qkv = torch.randn(batch.q.shape[0], 8, 32, device=DEVICE)
    qkv[:, :4] = batch.q
    batch.q = qkv[:, :4]
    wide = torch.full((len(MIXED_SEQ_LENS), 20), -7, dtype=torch.int32, device=DEVICE)
    wide[:, 3 : 3 + batch.block_tables.shape[1]] = batch.block_tables
    batch.block_tables = wide[:, 3 : 3 + batch.block_tables.shape[1]]
    assert not batch.q.is_contiguous() and not batch.block_tables.is_contiguous()
    torch.testing.assert_close(run_triton(batch), expected, atol=0, rtol=0)


def test_decode_batch_larger_than_sequence_scan_chunk() -> None:
    """70 decoding sequences: each program scans the sequence starts in two chunks of 64."""
    gen = torch.Generator().manual_seed(3)
    seq_lens = torch.randint(1, 40, (70,), generator=gen).tolist()
    batch = make_batch(
        [1] * 70,
        seq_lens,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        block_size=16,
        device=DEVICE,
        seed=3,
    )
    assert_matches_definition(batch, run_triton(batch))


def test_sequences_without_new_tokens_and_empty_batch() -> None:
    batch = make_batch(
        [0, 4, 0, 1],
        [10, 4, 3, 18],
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        block_size=16,
        device=DEVICE,
    )
    assert_matches_definition(batch, run_triton(batch))

    empty = make_batch(
        [0], [5], num_heads=2, num_kv_heads=2, head_dim=16, block_size=16, device=DEVICE
    )
    assert run_triton(empty).shape == (0, 2, 16)


def test_rejects_bad_inputs() -> None:
    from triode.kernels import triton_attention

    batch = make_batch(
        [1], [5], num_heads=6, num_kv_heads=4, head_dim=16, block_size=16, device=DEVICE
    )
    with pytest.raises(ValueError, match="multiple"):
        triton_attention.paged_attention(*batch.args())
    batch = make_batch(
        [1], [5], num_heads=4, num_kv_heads=4, head_dim=16, block_size=16, device=DEVICE
    )
    args = list(batch.args())
    args[3] = batch.block_tables.long()
    with pytest.raises(ValueError, match="block_tables must be int32"):
        triton_attention.paged_attention(*args)
    args = list(batch.args())
    args[2] = batch.v_cache.half()
    with pytest.raises(ValueError, match="differ"):
        triton_attention.paged_attention(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_realistic_shapes(dtype) -> None:
    """Compiled kernel, head_dim 128, long contexts, a real decode + prefill mix."""
    gen = torch.Generator().manual_seed(0)
    seq_lens = torch.randint(500, 2100, (24,), generator=gen).tolist()
    q_lens = [1] * 20 + [64, 200, 1, 300]
    batch = make_batch(
        q_lens,
        seq_lens,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        block_size=16,
        dtype=dtype,
        device=DEVICE,
    )
    expected = reference.paged_attention(
        *(t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in batch.args())
    )
    torch.testing.assert_close(run_triton(batch).float(), expected, **TOLERANCES[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_cache_offsets_beyond_int32() -> None:
    """A cache of more than 2**31 elements: block ids times strides must not wrap in int32."""
    block_size, kvh, d = 16, 1, 128
    num_blocks = (1 << 31) // (block_size * kvh * d) + 64
    if torch.cuda.mem_get_info()[0] < 2 * num_blocks * block_size * kvh * d * 2 + (2 << 30):
        pytest.skip("not enough free GPU memory for two 4 GiB caches")
    small = make_batch(
        [1, 3],
        [40, 20],
        num_heads=2,
        num_kv_heads=kvh,
        head_dim=d,
        block_size=block_size,
        dtype=torch.float16,
        device=DEVICE,
    )
    expected = run_triton(small)
    k_cache = torch.empty(num_blocks, block_size, kvh, d, dtype=torch.float16, device=DEVICE)
    v_cache = torch.empty_like(k_cache)
    # Move the used blocks to the far end of the big cache and remap the tables.
    used = small.block_tables.unique().long()
    far = num_blocks - len(used) + torch.arange(len(used), device=DEVICE)
    k_cache[far] = small.k_cache[used]
    v_cache[far] = small.v_cache[used]
    remap = torch.zeros(int(used.max()) + 1, dtype=torch.int32, device=DEVICE)
    remap[used] = far.to(torch.int32)
    small.block_tables = remap[small.block_tables.long()]
    small.k_cache, small.v_cache = k_cache, v_cache
    torch.testing.assert_close(run_triton(small), expected, atol=0, rtol=0)
