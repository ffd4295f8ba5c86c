"""The fused step (kernels/cpu/decode_step.c) over 16-bit KV caches against the module path, on
the real bundled model: what each writes into the cache, the hidden states, greedy tokens.

The two paths compute K/V in float32 equal to float rounding, not bit for bit (their norms sum
in another order), so their 16-bit roundings are the same number or neighbours; that the
rounding itself is torch's, bit for bit, tests/kernels/test_kv_store.py checks."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_decode_step import _decode_both_ways, _linears
from triode.engine import LLM, SamplingParams
from triode.kernels import cpu_decode_step, cpu_quant

pytestmark = pytest.mark.skipif(
    not (cpu_decode_step.is_available() and cpu_quant.is_available()), reason="no C compiler"
)


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def llm16(request) -> LLM:
    llm = LLM(
        enable_prefix_caching=False, num_kv_blocks=96, block_size=16, kv_cache_dtype=request.param
    )
    for lin in _linears(llm):  # float32 activations on both paths (as test_decode_step.py)
        lin.int8_activations = False
    return llm


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_decode_rows_write_the_module_paths_numbers(llm16):
    """Each 16-bit value the fused step writes is the module path's or within a few units of
    its last place (measured: at most 3.3 for bf16, 0.8 for float16, in eps*|x| + 1e-3), and
    nearly all are the same bits (measured 95-98%)."""
    runner = llm16.engine.runner
    assert runner.attention.name == "cpu" and runner.kv_dtype in (torch.float16, torch.bfloat16)
    eps = torch.finfo(runner.kv_dtype).eps
    (h_mod, kv_mod), (h_fused, kv_fused), calls = _decode_both_ways(llm16, [7, 40, 130])
    assert calls > 0, "the fused step did not run"
    num_equal = num_values = 0
    for (k_mod, v_mod), (k_fused, v_fused) in zip(kv_mod, kv_fused):
        for mod, fused in ((k_mod, k_fused), (v_mod, v_fused)):
            assert mod.dtype == fused.dtype == runner.kv_dtype
            bound = 4 * (eps * mod.float().abs() + 1e-3)
            assert bool(((fused.float() - mod.float()).abs() <= bound).all())
            num_equal += int((mod.view(torch.int16) == fused.view(torch.int16)).sum())
            num_values += mod.numel()
    assert num_equal >= 0.9 * num_values, (num_equal, num_values)
    assert _relative(h_fused, h_mod) < 1e-3  # measured 1.4e-5 (float16), 1.4e-4 (bf16)


def test_prompt_rows_agree_with_the_module_path(llm16):
    """A step with a 9-token chunk: the module path runs its linears on other kernels (more
    rows), so both sides differ by more than rounding; measured 3e-3 relative."""
    (h_mod, kv_mod), (h_fused, kv_fused), calls = _decode_both_ways(
        llm16, [7, 40, 130], new_lens=[1, 9, 1]
    )
    assert calls > 0, "the fused step did not run"
    for (k_mod, v_mod), (k_fused, v_fused) in zip(kv_mod, kv_fused):
        assert _relative(k_fused, k_mod) < 2e-2 and _relative(v_fused, v_mod) < 2e-2
    assert _relative(h_fused, h_mod) < 2e-2


def test_greedy_tokens_are_the_module_paths(llm16):
    model = llm16.engine.runner.model
    prompts = [{"prompt_token_ids": list(range(1000, 1000 + n))} for n in (60, 9, 25)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outputs = {}
    for fused in (False, True):
        model.fused_decode_enabled = fused
        try:
            outs = llm16.generate(prompts, params, use_tqdm=False)
        finally:
            model.fused_decode_enabled = True
        outputs[fused] = [o.outputs[0].token_ids for o in outs]
    assert model._fused is not None and model._fused[1].num_calls > 0
    assert outputs[True] == outputs[False]
