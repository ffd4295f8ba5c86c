"""GGUF block formats: our unpacking (codes, scales, offsets) reproduces `gguf`'s own
de-quantization bit for bit, per format; the kernel layout keeps those numbers exactly; and the
bundled file's tensors, read as they are quantized, equal transformers' de-quantized weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from triode.engine.quant.gguf_blocks import SUPPORTED, unpack
from triode.engine.quant.onthefly import from_gguf
from triode.kernels import cpu_quant

Q = GGMLQuantizationType
ROWS, COLS = 6, 512


def random_blocks(qtype: GGMLQuantizationType, seed: int) -> np.ndarray:
    """Random bytes for every field (all code and scale bit patterns), with the float16 super
    scales drawn from ordinary values so that no NaN or infinity hides a mismatch."""
    rng = np.random.default_rng(seed)
    values, size = GGML_QUANT_SIZES[qtype]
    n = ROWS * COLS // values
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    halves = (rng.standard_normal((n, 2)) * 0.02).astype(np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        raw[:, 208:210] = halves[:, :2]
    elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q4_1, Q.Q5_1):
        raw[:, 0:4] = halves
    else:  # Q4_0, Q8_0, Q5_0
        raw[:, 0:2] = halves[:, :2]
    return raw.reshape(ROWS, -1)


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unpacking_equals_gguf_dequantization_exactly(qtype, seed):
    raw = random_blocks(qtype, seed)
    codes = unpack(raw, qtype, ROWS, COLS)
    want = dequantize(raw, qtype).reshape(ROWS, COLS)
    np.testing.assert_array_equal(bits_of(codes.dequantize()), bits_of(want))
    # The kernel layout holds the same numbers (Q4_0 shifted to unsigned codes + offset, where
    # d * 8 - 8 d gives +0.0 for gguf's d * 0 = -0.0 when d < 0: equal values, other bits).
    packed = from_gguf(codes)
    np.testing.assert_array_equal(cpu_quant.dequantize_reference(packed).numpy(), want)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda t: t.name)
def test_unpacking_real_quantized_data(qtype):
    """Blocks made by gguf's own quantizer from float data (not random bytes)."""
    data = np.random.default_rng(3).standard_normal((ROWS, COLS)).astype(np.float32)
    raw = quantize(data, qtype)
    codes = unpack(raw, qtype, ROWS, COLS)
    np.testing.assert_array_equal(
        bits_of(codes.dequantize()), bits_of(dequantize(raw, qtype).reshape(ROWS, COLS))
    )


@pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler")
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_bf16_dequantization_rounds_the_exact_values(qtype):
    """The dense path's bf16 weights are gguf's float32 values, each rounded once."""
    raw = random_blocks(qtype, 7)
    packed = from_gguf(unpack(raw, qtype, ROWS, COLS))
    out = torch.empty(COLS, ROWS, dtype=torch.bfloat16)
    cpu_quant.dequantize_bf16(packed, out)
    want = torch.from_numpy(dequantize(raw, qtype).reshape(ROWS, COLS)).t().bfloat16()
    assert torch.equal(out, want)


def test_bad_sizes_are_refused():
    raw = random_blocks(Q.Q4_1, 0)
    with pytest.raises(ValueError, match="not whole blocks"):
        unpack(raw, Q.Q4_1, ROWS * 2, COLS // 2 + 16)
    with pytest.raises(ValueError, match="do not hold"):
        unpack(raw, Q.Q4_1, ROWS + 1, COLS)
    with pytest.raises(NotImplementedError, match="Q5_0"):
        unpack(random_blocks(Q.Q5_0, 0), Q.Q5_0, ROWS, COLS)


def test_bundled_file_read_as_quantized_equals_transformers_weights(bundled_folder):
    """Every tensor of the bundled Q4_1/Q8_0 file, unpacked (q/k rows put back in rotate-half
    order), equals the float32 weight transformers made of it, bit for bit."""
    from safetensors.torch import load_file

    from triode.engine.models.loader import gguf_source
    from triode.engine.quant.gguf_weights import read_gguf_tensors

    tensors, types = read_gguf_tensors(gguf_source(bundled_folder), 9, 3)
    assert types == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    reference = load_file(str(bundled_folder / "model.safetensors"))
    assert set(tensors) == set(reference)
    for name, value in tensors.items():
        got = value.dequantize() if hasattr(value, "dequantize") else value
        want = reference[name].numpy()
        np.testing.assert_array_equal(bits_of(got).reshape(want.shape), bits_of(want), name)
