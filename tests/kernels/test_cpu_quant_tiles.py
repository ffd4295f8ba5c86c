"""The AMX tile kernel (kernels/cpu/quant_tiles.c) against `gguf`'s own de-quantization for
every GGUF block format we serve: each weight rounded once to bf16 (exactly, checked through
one-hot rows), and products of random rows against float64 sums of the same bf16 numbers, for
row counts that fill tiles partly, wholly and with a tail. Also: the build without AMX is a stub
that says so, and QuantLinear then keeps the dense path."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from triode.engine.quant.gguf_blocks import SUPPORTED, unpack
from triode.engine.quant.linear import QuantLinear, Scratch
from triode.engine.quant.onthefly import from_gguf, quantize_int8
from triode.kernels import cpu_quant, cpu_quant_tiles
from triode.kernels.cpu_build import build

Q = GGMLQuantizationType
N, K = 70, 512  # 70: one whole 64-column block and a ragged one

needs_tiles = pytest.mark.skipif(not cpu_quant_tiles.is_available(), reason="no AMX-BF16 here")


def gguf_weight(qtype: GGMLQuantizationType, seed: int) -> tuple[object, torch.Tensor]:
    """(kernel weight, gguf's float32 de-quantization [N, K]) of random blocks: every code and
    scale bit pattern, float16 super scales from ordinary values (no NaN or infinity)."""
    rng = np.random.default_rng(seed)
    values, size = GGML_QUANT_SIZES[qtype]
    n = N * K // values
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    halves = (rng.standard_normal((n, 2)) * 0.02).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        raw[:, 208:210] = halves[:, :2]
    elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q4_1):
        raw[:, 0:4] = halves
    else:  # Q4_0, Q8_0
        raw[:, 0:2] = halves[:, :2]
    raw = raw.reshape(N, -1)
    want = torch.from_numpy(dequantize(raw, qtype).reshape(N, K).copy())
    return from_gguf(unpack(raw, qtype, N, K)), want


@needs_tiles
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_each_weight_is_gguf_value_rounded_once_to_bf16(qtype):
    """One-hot rows pick single weights: the products must be exactly bf16(gguf's value)."""
    weight, want = gguf_weight(qtype, 1)
    got = cpu_quant_tiles.tile_matmul(torch.eye(K), weight)  # 512 rows: 32 whole tiles
    assert torch.equal(got, want.t().bfloat16().float())


@needs_tiles
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [5, 17, 45])
def test_products_match_float64_on_the_same_bf16_numbers(qtype, rows):
    weight, want = gguf_weight(qtype, rows)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)) * 3
    got = cpu_quant_tiles.tile_matmul(x, weight)
    xb, wb = x.bfloat16().double(), want.bfloat16().double()
    reference = xb @ wb.t()
    # float32 sums: errors scale with sum |x_k w_nk|; one weight rounded differently would
    # move a result by ~2^-9 |x_k w_nk|, above this bound for these sizes.
    bound = float((xb.abs() @ wb.abs().t()).max())
    torch.testing.assert_close(got.double(), reference, rtol=0, atol=2e-7 * bound)


@needs_tiles
def test_strided_rows_and_output_slice():
    weight, want = gguf_weight(Q.Q4_1, 5)
    wide = torch.randn(19, K + 40)
    x = wide[:, 8 : 8 + K]
    out = torch.full((19, N + 30), 7.0)
    cpu_quant_tiles.tile_matmul(x, weight, out[:, 10 : 10 + N])
    reference = x.bfloat16().double() @ want.bfloat16().double().t()
    torch.testing.assert_close(out[:, 10 : 10 + N].double(), reference, rtol=1e-5, atol=1e-5)
    assert (out[:, :10] == 7).all() and (out[:, 10 + N :] == 7).all()


def test_build_without_amx_is_a_stub_that_says_so():
    """A CPU or compiler without AMX-BF16 (e.g. AMD Zen) still builds the library."""
    if not cpu_quant.is_available():
        pytest.skip("no C compiler")
    lib = build("quant_tiles.c", ("-ffp-contract=off", "-mno-amx-tile", "-mno-amx-bf16"))
    assert lib is not None, "the build failed without AMX"
    assert lib.triode_tiles_init() == -3
    lib.triode_quant_matmul_tiles.restype = ctypes.c_int
    assert lib.triode_quant_matmul_tiles(*([None] * 3 + [0] * 10)) == -3


@pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler")
def test_linear_without_tile_shapes_keeps_the_dense_path():
    """Inputs that are not whole tile rows (48) go to the dense GEMM (bf16 products; it also
    rounds its outputs to bf16)."""
    w = torch.randn(100, 48) * 0.1
    layer = QuantLinear([quantize_int8(w)], None, Scratch())
    assert not layer.has_tiles
    x = torch.randn(9, 48)
    assert torch.equal(layer.forward_bf16(x), layer.forward_dense(x))
    dense = cpu_quant.dequantize_reference(layer.parts[0])
    want = x.bfloat16().double() @ dense.bfloat16().double().t()
    torch.testing.assert_close(layer.forward_bf16(x).double(), want, rtol=1e-2, atol=1e-3)
