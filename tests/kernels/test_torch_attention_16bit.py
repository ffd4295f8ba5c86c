"""The planned torch paged attention (prompt chunks; decode tokens without the C kernel) over
bfloat16 / float16 KV caches with float32 queries: it attends in float32 over the cache's
values, so it equals the float64 definition over those same values to float32 rounding (q and
the softmax weights are never rounded to 16 bits)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_reference_attention import CASES, make_batch
from triode.kernels import torch_attention
from triode.kernels.reference import naive_paged_attention


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q_lens,ctx_lens", CASES)
def test_16bit_cache_is_attended_in_float32(dtype, q_lens, ctx_lens):
    q, kc, vc, bt, cu, lens = make_batch(q_lens, ctx_lens, 6, 2, 16, 4, seed=3)
    kc16, vc16 = kc.to(dtype), vc.to(dtype)
    got = torch_attention.paged_attention(q, kc16, vc16, bt, cu, lens, 0.25)
    assert got.dtype == torch.float32
    want = naive_paged_attention(q, kc16.float(), vc16.float(), bt, cu, lens, 0.25)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
