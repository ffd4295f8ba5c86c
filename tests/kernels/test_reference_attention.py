"""The planned torch paged attention (the CPU path for prompt chunks) and the reference (the
oracle the other kernels are tested against) against the plain float64 definition."""

from __future__ import annotations

import pytest
import torch

from triode.kernels import paged_attention, reference, write_kv_cache
from triode.kernels.reference import naive_paged_attention


def make_batch(q_lens, ctx_lens, num_heads, num_kv_heads, head_dim, block_size, seed=0):
    """Random caches with shuffled (non-contiguous) block tables for a varlen batch."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-c // block_size) for c in ctx_lens]
    num_blocks = sum(blocks_per_seq) + 5
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, i = [], 0
    for nb in blocks_per_seq:
        tables.append(perm[i : i + nb])
        i += nb
    max_blocks = max(blocks_per_seq)
    block_tables = torch.tensor(
        [t + [0] * (max_blocks - len(t)) for t in tables], dtype=torch.int32
    )
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=g)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k_cache, v_cache, block_tables, cu, torch.tensor(ctx_lens, dtype=torch.int32)


CASES = [
    # (q_lens, context lengths incl. new tokens)
    ([1, 1, 1, 1], [1, 17, 40, 5]),  # decode, uneven
    ([7], [7]),  # a whole prompt
    ([5, 1, 12, 1], [21, 33, 12, 2]),  # prompt chunks over cached context, mixed with decode
    ([16, 3], [48, 3]),
]


@pytest.mark.parametrize("q_lens,ctx_lens", CASES)
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 2), (8, 1)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_matches_the_definition(q_lens, ctx_lens, heads, block_size):
    num_heads, num_kv_heads = heads
    q, kc, vc, bt, cu, lens = make_batch(q_lens, ctx_lens, num_heads, num_kv_heads, 16, block_size)
    scale = 16**-0.5
    got = paged_attention(q, kc, vc, bt, cu, lens, scale)
    want = naive_paged_attention(q, kc, vc, bt, cu, lens, scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    oracle = reference.paged_attention(q, kc, vc, bt, cu, lens, scale)
    torch.testing.assert_close(oracle, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("write", [write_kv_cache, reference.write_kv_cache])
def test_write_kv_cache_uses_slots_and_skips_padding(write):
    kc = torch.zeros(3, 4, 2, 8)
    vc = torch.zeros(3, 4, 2, 8)
    key = torch.randn(3, 2, 8)
    value = torch.randn(3, 2, 8)
    write(key, value, kc, vc, torch.tensor([9, -1, 2]))
    assert torch.equal(kc[2, 1], key[0]) and torch.equal(vc[2, 1], value[0])
    assert torch.equal(kc[0, 2], key[2]) and torch.equal(vc[0, 2], value[2])
    assert int((kc != 0).any(dim=(2, 3)).sum()) == 2  # the padded token wrote nothing


def test_unknown_backend_is_refused():
    q, kc, vc, bt, cu, lens = make_batch([1], [3], 2, 2, 8, 4)
    with pytest.raises(ValueError, match="backend"):
        paged_attention(q, kc, vc, bt, cu, lens, 1.0, backend="cuda-magic")
