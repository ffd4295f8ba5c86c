"""The fused decode step's KV write (kernels/cpu/decode_step.c `triode_store_kv`) rounds float32
to bfloat16 / float16 exactly as torch's `.to(dtype)` does (to nearest, ties to even), so the
fused and the module path leave the same bits in a 16-bit cache."""

from __future__ import annotations

import pytest
import torch

from triode.kernels import cpu_decode_step
from triode.kernels.cpu_decode_step import store_kv

pytestmark = pytest.mark.skipif(not cpu_decode_step.is_available(), reason="no C compiler")


def _values() -> torch.Tensor:
    """Random bit patterns (every exponent, subnormals, infinities), values exactly halfway
    between two bf16 / two float16 numbers, float16's overflow and subnormal edges."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (1 << 18,), generator=gen, dtype=torch.int64)
    ties_bf16 = (torch.arange(1 << 15, dtype=torch.int64) << 16) | 0x8000
    ties_f16 = (torch.arange(1 << 16, dtype=torch.int64) << 13) | 0x1000
    patterns = torch.cat([bits, ties_bf16, ties_f16]).to(torch.int32).view(torch.float32)
    scaled = torch.randn(1 << 16, generator=gen) * torch.exp2(
        torch.randint(-30, 20, (1 << 16,), generator=gen).float()
    )
    edges = torch.tensor(
        [0.0, -0.0, float("inf"), -float("inf"), 65504.0, 65519.99, 65520.0, -65520.0]
        + [2**-25, -(2**-25), 2**-24, 3 * 2**-26, 2**-14, 2**-14 - 2**-25]
    )
    values = torch.cat([patterns, scaled, edges])
    return values[~values.isnan()].contiguous()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_store_rounds_as_torch_converts(dtype):
    values = _values()
    out = torch.empty(values.shape, dtype=dtype)
    store_kv(values, out)
    want = values.to(dtype)
    differ = out.view(torch.uint8).view(-1, out.element_size()) != want.view(torch.uint8).view(
        -1, out.element_size()
    )
    bad = differ.any(dim=1)
    assert not bad.any(), (values[bad][:5].tolist(), out[bad][:5].tolist(), want[bad][:5].tolist())
