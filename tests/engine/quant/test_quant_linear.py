"""QuantLinear: its kernels (direct quantized, AMX tiles, de-quantized dense bf16) compute x W^T for
outputs made of parts in different formats (and float parts), split into scratch-sized column
chunks; the kernel is chosen per call by the number of rows; calibration sets the switch-over."""

from __future__ import annotations

import ctypes
import json

import pytest
import torch

import triode.engine.quant.linear as quant_linear
from triode.engine.quant.calibrate import calibrate
from triode.engine.quant.linear import QuantLinear, Scratch
from triode.engine.quant.onthefly import quantize_int4, quantize_int8
from triode.kernels import cpu_quant

pytestmark = pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler")

K = 96


def parts_and_dense():
    torch.manual_seed(0)
    floats = [torch.randn(n, K) * 0.1 for n in (128, 100, 70)]
    parts = [quantize_int4(floats[0]), quantize_int8(floats[1]), floats[2]]  # last: float part
    dense = torch.cat(
        [
            cpu_quant.dequantize_reference(parts[0]),
            cpu_quant.dequantize_reference(parts[1]),
            floats[2],
        ]
    )
    return parts, dense


@pytest.mark.parametrize("max_columns", [8192, 128, 64])
@pytest.mark.parametrize("rows", [1, 5, 33])
def test_both_kernels_compute_the_product(monkeypatch, max_columns, rows):
    monkeypatch.setattr(quant_linear, "MAX_SCRATCH_COLUMNS", max_columns)
    parts, dense = parts_and_dense()
    bias = torch.randn(dense.shape[0])
    layer = QuantLinear(parts, bias, Scratch())
    assert len(layer._chunks) == {8192: 1, 128: 3, 64: 6}[max_columns]
    x = torch.randn(rows, K)
    want = x.double() @ dense.double().t() + bias.double()
    direct = layer.forward_direct(x) + bias
    torch.testing.assert_close(direct.double(), want, rtol=1e-5, atol=1e-5)
    dense_path = layer.forward_dense(x) + bias  # bf16 inputs and weights: ~3 significant digits
    torch.testing.assert_close(dense_path.double(), want, rtol=2e-2, atol=2e-2)
    if layer.has_tiles:  # the same bf16 numbers, float32 sums and outputs (float part: float32)
        tiles = layer.forward_tiles(x)
        quantized = dense[:228].bfloat16().double()
        want_q = x.bfloat16().double() @ quantized.t()
        torch.testing.assert_close(tiles[:, :228].double(), want_q, rtol=1e-5, atol=1e-5)
        float_part = want[:, 228:] - bias[228:].double()
        torch.testing.assert_close(tiles[:, 228:].double(), float_part, rtol=1e-5, atol=1e-5)


def test_kernel_is_chosen_by_rows():
    parts, _ = parts_and_dense()
    layer = QuantLinear(parts, None, Scratch())
    layer.max_direct_rows = 3
    small, big = torch.randn(3, K), torch.randn(4, K)
    assert torch.equal(layer(small), layer.forward_direct(small))
    assert torch.equal(layer(big), layer.forward_bf16(big))
    assert not torch.equal(layer(big), layer.forward_direct(big))  # the paths do differ
    assert layer(small.bfloat16()).dtype == torch.bfloat16


def test_calibration_sets_every_linear_of_a_shape():
    parts, _ = parts_and_dense()
    model = torch.nn.ModuleList([QuantLinear(parts, None, Scratch()) for _ in range(3)])
    model.append(QuantLinear([quantize_int8(torch.randn(64, K))], None, Scratch()))
    chosen = calibrate(model, fixed_rows=5)
    assert set(chosen.values()) == {5} and len(chosen) == 2
    assert all(m.max_direct_rows == 5 for m in model)
    measured = calibrate(model)
    assert all(rows >= 1 for rows in measured.values())
    assert [m.max_direct_rows for m in model[:3]] == [measured[model[0].shape_key]] * 3


def test_calibration_is_cached_per_machine(tmp_path, monkeypatch):
    """Measured once, then read back (later starts skip the timing); another thread count is
    another machine key, measured afresh; a measurement disturbed by other processes is not
    kept."""
    import triode.engine.quant.calibrate as calibration

    real_crossover, real_prefers_int8 = calibration._crossover, calibration._prefers_int8
    parts, _ = parts_and_dense()
    model = torch.nn.ModuleList([QuantLinear(parts, None, Scratch()) for _ in range(2)])
    cache = tmp_path / "cache" / calibration.CACHE_FILE
    quiet = {"value": 0.0}  # cores other processes used meanwhile (the suite may run beside)
    monkeypatch.setattr(calibration, "others_cores_since", lambda mark: quiet["value"])
    monkeypatch.setattr(calibration, "CHOOSE_INT8", True)  # the choice is cached too
    quiet["value"] = 1.5  # a busy machine: applied, not cached
    assert calibrate(model, cache=cache) and not cache.exists()
    quiet["value"] = 0.0
    measured = calibrate(model, cache=cache)
    saved = json.loads(cache.read_text())
    key = calibration.machine_key()
    int8 = int(model[0].int8_activations)
    suffix = calibration.INT8_SUFFIX
    want = {
        **{repr(k): v for k, v in measured.items()},
        **{repr(k) + suffix: int8 for k in measured},
    }
    assert saved == {key: want}
    # what a later start finds: the other direct kernel where there is a choice
    saved[key] = {k: (1 - int8 if k.endswith(suffix) else 1234) for k in saved[key]}
    cache.write_text(json.dumps(saved))
    monkeypatch.setattr(calibration, "_crossover", lambda members: pytest.fail("re-measured"))
    monkeypatch.setattr(calibration, "_prefers_int8", lambda members: pytest.fail("re-measured"))
    assert set(calibrate(model, cache=cache).values()) == {1234}
    assert all(m.max_direct_rows == 1234 for m in model)
    assert all(m.int8_activations == (m.has_int8 and not int8) for m in model)
    monkeypatch.setattr(calibration, "_prefers_int8", real_prefers_int8)
    monkeypatch.setattr(calibration, "_crossover", real_crossover)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert calibration.machine_key() != key
        assert 1234 not in calibrate(model, cache=cache).values()
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache.read_text())) == 2


def test_other_processes_cores_are_busy_time_minus_ours(monkeypatch):
    import triode.engine.quant.calibrate as calibration

    # 3 s of the machine's CPU over 2 s of wall clock, 1 s of it ours: others used 1 core.
    monkeypatch.setattr(calibration, "load_mark", lambda: (103.0, 11.0, 2.0))
    assert calibration.others_cores_since((100.0, 10.0, 0.0)) == 1.0
    assert calibration.others_cores_since((None, 10.0, 0.0)) is None  # no /proc


def test_int4_and_int8_quantizers_round_to_nearest():
    w = torch.randn(64, 64)
    groups = w.view(64, 2, 32)
    q8 = cpu_quant.dequantize_reference(quantize_int8(w)).view(64, 2, 32)
    step8 = groups.abs().amax(-1) / 127  # the coarser of the two schemes' steps
    assert ((q8 - groups).abs() <= step8[..., None] / 2 + 1e-6).all()
    q4 = cpu_quant.dequantize_reference(quantize_int4(w)).view(64, 2, 32)
    step4 = (groups.amax(-1) - groups.amin(-1)) / 15
    assert ((q4 - groups).abs() <= step4[..., None] / 2 + 1e-6).all()
    # Input sizes that are not whole groups of 32 fall back to int8, one group per row.
    fallback = quantize_int4(torch.randn(8, 48))
    assert (fallback.bits, fallback.group_size) == (8, 48)


def test_int8_keeps_4_and_8_bit_grids_exactly():
    """Weights that already sit on a Q4_1-like grid (d * q + m) or a Q8_0-like one (d * q)
    survive int8 re-quantization unchanged: the asymmetric, resp. symmetric, scheme is kept."""
    g = torch.Generator().manual_seed(1)
    d = torch.rand(16, 2, 1, generator=g) * 0.01 + 0.001
    q4 = torch.randint(0, 16, (16, 2, 32), generator=g)
    q4[..., 0], q4[..., 1] = 0, 15  # every group spans its grid
    grid4 = (d * q4 - 8 * d).view(16, 64)
    packed4 = quantize_int8(grid4)
    assert packed4.offsets is not None
    torch.testing.assert_close(cpu_quant.dequantize_reference(packed4), grid4, rtol=0, atol=1e-7)
    q8 = torch.randint(-127, 128, (16, 2, 32), generator=g)
    q8[..., 0] = 127
    grid8 = (d * q8).view(16, 64)
    packed8 = quantize_int8(grid8)
    assert packed8.offsets is None
    torch.testing.assert_close(cpu_quant.dequantize_reference(packed8), grid8, rtol=0, atol=1e-7)


@pytest.mark.skipif(not cpu_quant.has_int8_kernel(), reason="no AVX512-VNNI/VBMI")
def test_direct_kernel_on_int8_activations_and_its_c_calls():
    """`int8_activations` switches the small-step path (quantized parts only; a float part
    stays a float matrix); each part exposes its C entry point and weight arguments; a fixed
    switch-over keeps float32 activations, a measured one keeps the faster kernel."""
    import triode.engine.quant.calibrate as calibration

    parts, _ = parts_and_dense()
    layer = QuantLinear(parts, None, Scratch())
    assert layer.has_int8 and not layer.int8_activations
    x = torch.randn(3, K)
    floats = layer(x)
    layer.int8_activations = True
    assert torch.equal(layer(x), layer.forward_direct_int8(x))
    torch.testing.assert_close(layer(x), floats, rtol=1e-3, atol=1e-3)
    assert not torch.equal(layer(x), floats)
    lib = cpu_quant.load_library()
    int8_fn = ctypes.cast(lib.triode_quant_matmul_q8a, ctypes.c_void_p).value
    calls = layer.direct_calls
    assert [call.fn_address for call, _ in calls[:2]] == [int8_fn, int8_fn]
    assert calls[0][0].weight_args == cpu_quant.weight_args(parts[0])
    assert [start for _, start in calls] == [0, 128, 228] and calls[2][0] is parts[2]
    calibrate(torch.nn.ModuleList([layer]), fixed_rows=4)
    assert not layer.int8_activations
    for faster in (True, False):
        times = iter([1.0, 2.0] * 6 if faster else [2.0, 1.0] * 6)  # int8 first, then float
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(calibration, "CHOOSE_INT8", True)
            mp.setattr(calibration, "_best_time", lambda fn, repeats=1, t=times: (fn(), next(t))[1])
            assert calibration._prefers_int8([layer]) is faster
