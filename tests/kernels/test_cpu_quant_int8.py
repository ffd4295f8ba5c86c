"""The direct quantized matmul on integer dot products (kernels/cpu/quant_q8a.h through
`triode_quant_matmul_q8a`) against float64 arithmetic on the same rounded activations (x
rounded to two int8 digits per row and group in torch exactly as the kernel does): 4- and 8-bit codes,
half and float scales, with and without offsets, groups of 16/32/whole rows, widths that are
not whole 64-column blocks, 1 to 9 rows; a row's result alone; and the fallback where the CPU
lacks VNNI (the float kernel itself)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from tests.kernels.test_cpu_quant import make_weight
from triode.kernels import cpu_quant
from triode.kernels.cpu_build import build

pytestmark = [
    pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler"),
    pytest.mark.skipif(
        cpu_quant.is_available() and not cpu_quant.has_int8_kernel(),
        reason="no AVX512-VNNI/VBMI: the int8 kernel is the float one (test_fallback covers it)",
    ),
]


def round_to_int8(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(254 hi + lo [M, K] as float, d [M, K / group]): x ~ d * (254 hi + lo) with int8 digits
    hi, lo, as quant_q8a.h rounds (float32, to nearest even, in the same order)."""
    m, k = x.shape
    xg = x.view(m, k // group, group)
    amax = xg.abs().amax(dim=2, keepdim=True)
    # NOTE: in float64, then float32: a correctly rounded quotient, as C's `127.0f / a` (torch's
    # float32 scalar-by-tensor division is not, and moves a digit now and then).
    inv = torch.where(amax > 0, (127.0 / amax.double()).float(), torch.zeros_like(amax))
    t = xg * inv
    hi = torch.round(t)
    lo = torch.round((t - hi) * 254.0)
    assert hi.abs().max() <= 127 and lo.abs().max() <= 127
    return (254 * hi + lo).view(m, k), (amax / 32258.0)[..., 0]


def reference(x, codes, scales, offsets, group):
    """sum_g scale * d_g * sum_k code * (254 hi + lo)  +  offset * sum_k x  (float64)."""
    xq, d = round_to_int8(x, group)
    m = x.shape[0]
    n = codes.shape[0]
    dots = torch.einsum(
        "mgk,ngk->mng", xq.double().view(m, -1, group), codes.double().view(n, -1, group)
    )  # exact integers
    out = (dots * d.double()[:, None, :] * scales.double()[None]).sum(2)
    if offsets is not None:
        sums = x.double().view(m, -1, group).sum(2)  # [M, G]
        out = out + sums @ offsets.double().t()
    return out, (dots.abs() * d.double()[:, None, :] * scales.double()[None]).sum(2)


CASES = [
    # n, k, bits, group, offsets, half
    (200, 96, 4, 32, True, True),  # Q4_1
    (64, 64, 4, 32, False, False),
    (130, 128, 8, 32, False, True),  # Q8_0
    (70, 256, 8, 16, True, False),
    (96, 160, 8, 160, False, False),  # per channel: one group per row
    (257, 48, 4, 16, True, False),
]


def weight_parts(n, k, bits, group, offsets, half, seed=0):
    weight, _ = make_weight(n, k, bits, group, offsets, half, seed)
    codes = cpu_quant.codes_of(weight)
    scales = weight.scales[:, :n].t().float()
    shift = None if weight.offsets is None else weight.offsets[:, :n].t().float()
    return weight, codes, scales, shift


@pytest.mark.parametrize("n,k,bits,group,offsets,half", CASES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9])
def test_int8_kernel_matches_float64_on_the_rounded_activations(
    n, k, bits, group, offsets, half, rows
):
    weight, codes, scales, shift = weight_parts(n, k, bits, group, offsets, half)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    if k > group:
        x[0, :group] = 0.0  # an all-zero group: scale 0, nothing divided by it
    got = cpu_quant.quant_matmul(x, weight, int8_activations=True)
    want, magnitude = reference(x, codes, scales, shift, group)
    # Only float32 rounding of the per-group terms: the integer dot products are exact.
    if shift is not None:
        magnitude = (
            magnitude + x.abs().double().view(rows, -1, group).sum(2) @ shift.abs().double().t()
        )
    bound = magnitude
    assert (got.double() - want).abs().le(2e-6 * bound + 1e-7).all()
    # And it is the rounded activations' result: the float32 kernel's is 10x farther from it.
    exact = cpu_quant.quant_matmul(x, weight).double()
    assert (got.double() - want).abs().max() * 10 < (exact - want).abs().max()


@pytest.mark.parametrize("n,k,bits,group,offsets,half", CASES[:3])
def test_a_rows_result_does_not_depend_on_the_other_rows(n, k, bits, group, offsets, half):
    weight, *_ = weight_parts(n, k, bits, group, offsets, half)
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(7))
    together = cpu_quant.quant_matmul(x, weight, int8_activations=True)
    for r in range(9):
        alone = cpu_quant.quant_matmul(x[r : r + 1], weight, int8_activations=True)
        assert torch.equal(alone[0], together[r]), r
    strided = torch.zeros(3, 2 * k)
    strided[:, :k] = x[:3]
    out = torch.zeros(3, weight.out_features + 5)
    cpu_quant.quant_matmul(strided[:, :k], weight, out[:, : weight.out_features], True)
    assert torch.equal(out[:, : weight.out_features], together[:3])


def test_groups_that_are_not_whole_16s_use_the_float_kernel():
    weight, *_ = weight_parts(64, 72, 8, 24, False, False)
    x = torch.randn(3, 72)
    assert not cpu_quant.supports_int8(weight)
    assert torch.equal(
        cpu_quant.quant_matmul(x, weight, int8_activations=True), cpu_quant.quant_matmul(x, weight)
    )


def test_fallback_without_vnni_is_the_float_kernel():
    """Built for a CPU without AVX512-VNNI, the entry point is triode_quant_matmul itself."""
    lib = build("quant_matmul.c", ("-ffp-contract=off", "-mno-avx512vnni"))
    assert lib is not None
    assert lib.triode_quant_q8a_is_native() == 0
    weight, *_ = weight_parts(200, 96, 4, 32, True, True)
    x = torch.randn(3, 96)
    outs = []
    for fn in (lib.triode_quant_matmul_q8a, lib.triode_quant_matmul):
        fn.argtypes = cpu_quant.load_library().triode_quant_matmul.argtypes
        out = torch.empty(3, weight.out_features)
        args = cpu_quant.weight_args(weight)
        assert fn(x.data_ptr(), 96, 3, *args, out.data_ptr(), out.stride(0)) == 0
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[1], cpu_quant.quant_matmul(x, weight))


def test_prepared_call_exposes_the_c_entry_point():
    weight, *_ = weight_parts(130, 128, 8, 32, False, True)
    prepared = cpu_quant.PreparedMatmul(weight, cpu_quant.direct_kernel(True))
    lib = cpu_quant.load_library()
    assert prepared.fn_address == ctypes.cast(lib.triode_quant_matmul_q8a, ctypes.c_void_p).value
    assert prepared.weight_args == cpu_quant.weight_args(weight)
    x = torch.randn(2, 128)
    out = torch.empty(2, 130)
    prepared(x, out)
    assert torch.equal(out, cpu_quant.quant_matmul(x, weight, int8_activations=True))
