"""The CPU quantized matmul and de-quantizer (kernels/cpu/quant_matmul.c) against float64
arithmetic on the same numbers: 4- and 8-bit codes, half and float scales, with and without
offsets, group sizes 16/32/whole rows, widths that are not whole 64-column blocks, 1 to 70 rows
(both of the kernel's paths), strided inputs and outputs."""

from __future__ import annotations

import pytest
import torch

from triode.kernels import cpu_quant

pytestmark = pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler")


def make_weight(n, k, bits, group, offsets, half, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0, 16) if bits == 4 else (-128, 128)
    codes = torch.randint(lo, hi, (n, k), generator=g)
    scales = torch.rand(n, k // group, generator=g) * 0.02 + 1e-3
    shift = torch.randn(n, k // group, generator=g) * 0.05 if offsets else None
    if half:
        scales = scales.half().float()
        shift = None if shift is None else shift.half().float()
    weight = cpu_quant.pack(codes, scales, shift, bits, group)
    dense = scales.repeat_interleave(group, 1) * codes.float()
    if shift is not None:
        dense = dense + shift.repeat_interleave(group, 1)
    return weight, dense


CASES = [
    # n, k, bits, group, offsets, half
    (200, 96, 4, 32, True, False),
    (64, 64, 4, 32, False, True),
    (130, 128, 8, 32, False, True),
    (70, 256, 8, 16, False, False),
    (96, 160, 8, 160, False, False),  # per channel: one group per row
    (257, 64, 8, 32, True, False),
]


@pytest.mark.parametrize("n,k,bits,group,offsets,half", CASES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 70])
def test_matmul_matches_float64(n, k, bits, group, offsets, half, rows):
    weight, dense = make_weight(n, k, bits, group, offsets, half)
    assert weight.scales.dtype == (torch.float16 if half else torch.float32)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    got = cpu_quant.quant_matmul(x, weight)
    want = (x.double() @ dense.double().t()).float()
    # float32 sums: errors scale with sum |x_k w_nk|, not with the (cancelling) result
    bound = float((x.abs() @ dense.abs().t()).max())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6 * bound)


@pytest.mark.parametrize("n,k,bits,group,offsets,half", CASES)
def test_a_rows_result_does_not_depend_on_the_other_rows(n, k, bits, group, offsets, half):
    """Bit for bit: the few-rows path (codes unpacked per 4 rows) and the many-rows path (codes
    unpacked once, row tiles of 6, chunks of 64) do the same operations per row, so with
    every step on this kernel a request's numbers never depend on what shares its step."""
    weight, _ = make_weight(n, k, bits, group, offsets, half)
    x = torch.randn(70, k, generator=torch.Generator().manual_seed(1))
    alone = torch.cat([cpu_quant.quant_matmul(x[i : i + 1], weight) for i in range(70)])
    for rows in (2, 4, 5, 7, 13, 64, 70):
        assert torch.equal(cpu_quant.quant_matmul(x[:rows], weight), alone[:rows]), rows


@pytest.mark.parametrize("n,k,bits,group,offsets,half", CASES)
def test_dequantize_bf16_rounds_each_value_once(n, k, bits, group, offsets, half):
    weight, dense = make_weight(n, k, bits, group, offsets, half)
    assert torch.equal(cpu_quant.dequantize_reference(weight), dense)
    out = torch.empty(k, n, dtype=torch.bfloat16)
    cpu_quant.dequantize_bf16(weight, out)
    assert torch.equal(out, dense.t().bfloat16())
    if n <= 64:
        return
    # A column range starting on a block, into a slice of a wider buffer.
    wide = torch.zeros(k, n + 10, dtype=torch.bfloat16)
    cpu_quant.dequantize_bf16(weight, wide[:, 5 : 5 + n - 64], 64, n)
    assert torch.equal(wide[:, 5 : 5 + n - 64], dense[64:].t().bfloat16())
    assert not wide[:, :5].any() and not wide[:, 5 + n - 64 :].any()


def test_strided_input_and_output_slices():
    torch.manual_seed(0)
    weight, dense = make_weight(130, 96, 4, 32, True, False)
    x_wide = torch.randn(5, 200)
    x = x_wide[:, 7:103]  # rows with stride 200
    out = torch.full((5, 300), 7.0)
    cpu_quant.quant_matmul(x, weight, out[:, 50:180])
    want = (x.double() @ dense.double().t()).float()
    torch.testing.assert_close(out[:, 50:180], want, rtol=1e-5, atol=1e-5)
    assert (out[:, :50] == 7).all() and (out[:, 180:] == 7).all()


def test_rows_gathers_exact_values():
    weight, dense = make_weight(200, 64, 8, 32, False, True)
    index = torch.tensor([0, 199, 63, 64, 5, 5])
    assert torch.equal(cpu_quant.rows(weight, index), dense[index])
    weight4, dense4 = make_weight(100, 64, 4, 32, True, False)
    index = torch.tensor([31, 32, 63, 64, 99])
    assert torch.equal(cpu_quant.rows(weight4, index), dense4[index])


def test_concat_stacks_outputs():
    torch.manual_seed(0)
    parts = [make_weight(n, 64, 4, 32, True, False, seed=n) for n in (128, 64, 100)]
    fused = cpu_quant.concat([w for w, _ in parts])
    dense = torch.cat([d for _, d in parts])
    x = torch.randn(3, 64)
    torch.testing.assert_close(
        cpu_quant.quant_matmul(x, fused), (x.double() @ dense.double().t()).float()
    )
    assert not cpu_quant.can_concat([parts[2][0], parts[0][0]])  # 100 is not whole blocks
    other, _ = make_weight(64, 64, 8, 32, False, False)
    assert not cpu_quant.can_concat([parts[0][0], other])


def test_bad_arguments_are_refused():
    weight, _ = make_weight(64, 64, 4, 32, True, False)
    with pytest.raises(ValueError, match="float32"):
        cpu_quant.quant_matmul(torch.randn(2, 64).double(), weight)
    with pytest.raises(ValueError, match=r"\[M, 64\]"):
        cpu_quant.quant_matmul(torch.randn(2, 32), weight)
    with pytest.raises(ValueError, match=r"0\.\.15"):
        cpu_quant.pack(torch.full((4, 32), 16), torch.ones(4, 1), None, 4, 32)
    with pytest.raises(ValueError, match="cannot pack"):
        cpu_quant.pack(torch.zeros(4, 48, dtype=torch.int8), torch.ones(4, 1), None, 8, 32)
    with pytest.raises(RuntimeError, match="code -1"):
        cpu_quant.dequantize_bf16(weight, torch.empty(64, 64, dtype=torch.bfloat16), 32, 64)
