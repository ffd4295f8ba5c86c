"""The fused decode step (kernels/cpu/decode_step.c, engine.models.fused_decode) against the
module path it replaces: the same decode step on the same KV-cache state gives the same hidden
states and cache writes to float rounding, on the real bundled model (GGUF Q4_1 as stored) and
on tiny quantized models with q/k/v biases; steps carrying prompt chunks too, up to the bound
on the context their rows read; greedy generation is unchanged."""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import make_tiny_llama
from triode.engine import LLM, SamplingParams
from triode.engine.models.fused_decode import FusedDecode
from triode.engine.runner.attention import AttentionMetadata
from triode.kernels import cpu_decode_step, cpu_quant
from triode.kernels.cpu_decode_step import function_address

pytestmark = pytest.mark.skipif(
    not (cpu_decode_step.is_available() and cpu_quant.is_available()), reason="no C compiler"
)


@pytest.fixture(scope="module")
def bundled_llm() -> LLM:
    # NOTE: a float32 cache: these tests compare the two paths' float32 numbers to 1e-4; with
    # a 16-bit cache, values a float rounding apart may round to neighbouring 16-bit numbers
    # (tests/kernels/test_decode_step_kv16.py compares the paths over 16-bit caches).
    return LLM(
        enable_prefix_caching=False, num_kv_blocks=96, block_size=16, kv_cache_dtype="float32"
    )


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory, bundled_folder):
    """A tiny Qwen2 (q/k/v biases) whose biases are not zero (transformers starts them at 0)."""
    from transformers import AutoModelForCausalLM

    folder = make_tiny_llama(
        tmp_path_factory.mktemp("tiny-qwen2"), bundled_folder, model_type="qwen2",
        num_heads=4, num_kv_heads=2, head_dim=32, num_layers=3,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def _metadata(runner, q_lens, seq_lens, tables, slots) -> AttentionMetadata:
    bs = runner.block_size
    return AttentionMetadata.build(
        q_lens, seq_lens, tables, slots, bs, runner.kv_bytes_per_token, runner.device,
        runner.attention,
    )  # fmt: skip


def _decode_both_ways(llm: LLM, context_lens: list[int], seed: int = 0, new_lens=None):
    """Prefill sequences of `context_lens` tokens (module path), then run one step over all of
    them twice from the same cache state: module path, then fused. The step carries
    `new_lens[i]` new tokens of sequence i (default one each: a decode step; more: a prompt
    chunk after a cached prefix, or a fresh prompt where the context is 0). Returns (module
    hidden, module's new cache slots), the same for the fused path, and the fused calls."""
    runner = llm.engine.runner
    model = runner.model
    bs = runner.block_size
    rng = random.Random(seed)
    new_lens = new_lens or [1] * len(context_lens)
    caches = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in runner.kv_caches]
    tables, next_block = [], 0
    for n, new in zip(context_lens, new_lens):
        blocks = -(-(n + new) // bs)
        tables.append(list(range(next_block, next_block + blocks)))
        next_block += blocks
    assert next_block <= caches[0][0].shape[0]

    def slot(table: list[int], p: int) -> int:
        return table[p // bs] * bs + p % bs

    with torch.inference_mode():
        prefilled = [(n, t) for n, t in zip(context_lens, tables) if n]
        if prefilled:
            ids = [rng.randrange(300, 49000) for _ in range(sum(n for n, _ in prefilled))]
            positions = [p for n, _ in prefilled for p in range(n)]
            slots = [slot(t, p) for n, t in prefilled for p in range(n)]
            lens = [n for n, _ in prefilled]
            meta = _metadata(runner, lens, lens, [t for _, t in prefilled], slots)
            model.fused_decode_enabled = False
            model(torch.tensor(ids), torch.tensor(positions), caches, meta)

        new_ids = torch.tensor([rng.randrange(300, 49000) for _ in range(sum(new_lens))])
        spans = [range(n, n + new) for n, new in zip(context_lens, new_lens)]
        new_pos = torch.tensor([p for span in spans for p in span])
        new_slots = [slot(t, p) for t, span in zip(tables, spans) for p in span]
        seq_lens = [n + new for n, new in zip(context_lens, new_lens)]
        results = []
        for fused in (False, True):
            meta = _metadata(runner, new_lens, seq_lens, tables, new_slots)
            model.fused_decode_enabled = fused
            try:
                hidden = model(new_ids, new_pos, caches, meta)
            finally:
                model.fused_decode_enabled = True
            index = torch.tensor(new_slots)
            written = [
                (k.flatten(0, 1)[index].clone(), v.flatten(0, 1)[index].clone()) for k, v in caches
            ]
            results.append((hidden.clone(), written))
    calls = model._fused[1].num_calls if model._fused else 0
    return results[0], results[1], calls


@pytest.fixture(autouse=True)
def float_activations(request):
    """Both paths on the direct kernel's float32 activations unless a test says otherwise:
    with int8 ones (where calibration picks them) a float-rounding difference between the
    paths can move an activation's last digit, which the 1e-4 comparison is too tight for
    (tested on its own below)."""
    if "bundled_llm" not in request.fixturenames:
        yield
        return
    linears = _linears(request.getfixturevalue("bundled_llm"))
    saved = [lin.int8_activations for lin in linears]
    for lin in linears:
        lin.int8_activations = False
    yield
    for lin, value in zip(linears, saved):
        lin.int8_activations = value


def _assert_same_step(module, fused) -> None:
    (h_mod, kv_mod), (h_fused, kv_fused) = module, fused
    torch.testing.assert_close(h_fused, h_mod, rtol=1e-4, atol=1e-4)
    for (k_mod, v_mod), (k_fused, v_fused) in zip(kv_mod, kv_fused):
        torch.testing.assert_close(k_fused, k_mod, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v_fused, v_mod, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("context_lens", [[100], [7, 40, 130]])
def test_bundled_model_decode_step_matches_the_module_path(bundled_llm, context_lens):
    """One row and a few rows of the GGUF default (the direct kernel on both paths)."""
    module, fused, calls = _decode_both_ways(bundled_llm, context_lens)
    assert calls > 0, "the fused step did not run"
    _assert_same_step(module, fused)


SIXTEEN = [5 + 9 * i for i in range(16)]


def test_sixteen_rows_on_the_direct_kernel_match_the_module_path(bundled_llm):
    linears = _linears(bundled_llm)
    saved = [lin.max_direct_rows for lin in linears]
    try:
        for lin in linears:
            lin.max_direct_rows = 64
        module, fused, calls = _decode_both_ways(bundled_llm, SIXTEEN)
    finally:
        for lin, rows in zip(linears, saved):
            lin.max_direct_rows = rows
    assert calls > 0
    _assert_same_step(module, fused)


@pytest.mark.parametrize(
    ("context_lens", "new_lens"),
    [([40, 0, 20, 7], [1, 9, 12, 1]), ([0], [33]), ([17, 50], [16, 3])],
)
def test_prompt_rows_match_the_module_path(bundled_llm, context_lens, new_lens):
    """A step carrying prompt chunks (fresh, and after a cached prefix) beside decodes: each of a
    chunk's rows attends to its own context (earlier rows of the chunk included, written by the
    same layer first); the direct kernel on both paths, so to float rounding."""
    linears = _linears(bundled_llm)
    saved = [lin.max_direct_rows for lin in linears]
    try:
        for lin in linears:
            lin.max_direct_rows = 64
        module, fused, calls = _decode_both_ways(bundled_llm, context_lens, new_lens=new_lens)
    finally:
        for lin, rows in zip(linears, saved):
            lin.max_direct_rows = rows
    assert calls > 0
    _assert_same_step(module, fused)


def test_prompt_rows_past_the_bound_take_the_module_path(bundled_llm, monkeypatch):
    """A step whose prompt rows would read more context positions than the bound runs on the
    module path (its prompt attention is torch's SDPA there)."""
    # 20 rows after 30 cached tokens read 31 + ... + 50 = 810 positions.
    monkeypatch.setattr(FusedDecode, "max_prompt_positions", 809)
    _, _, calls = _decode_both_ways(bundled_llm, [30], new_lens=[20])
    assert calls == 0
    monkeypatch.setattr(FusedDecode, "max_prompt_positions", 810)
    _, _, calls = _decode_both_ways(bundled_llm, [30], new_lens=[20])
    assert calls == 1


def test_sixteen_rows_past_the_calibrated_rows_agree_with_the_module_path(bundled_llm):
    """Past the direct kernel's rows both paths call the big-step kernel (AMX tiles where there
    are, else the fused step is not taken). It rounds activations to bf16, which turns the
    paths' float-rounding differences into bf16-sized ones after 30 layers: compare at that
    size, and the greedy choice of every row."""
    module, fused, _ = _decode_both_ways(bundled_llm, SIXTEEN)
    _assert_close_step(bundled_llm, module, fused, 1e-2)


@pytest.mark.skipif(not cpu_quant.has_int8_kernel(), reason="no AVX512-VNNI")
def test_int8_activations_agree_with_the_module_path(bundled_llm):
    """With the int8-activation direct kernel both paths call it; they agree to the size of an
    activation digit, and on every row's greedy choice."""
    for lin in _linears(bundled_llm):
        lin.int8_activations = True
    module, fused, calls = _decode_both_ways(bundled_llm, [7, 40, 130])
    assert calls > 0
    int8_kernel = function_address(cpu_quant.direct_kernel(int8_activations=True))
    description = bundled_llm.engine.runner.model._fused[1].layers
    assert all(getattr(d, n).parts[0].small == int8_kernel for d in description for n in NAMES)
    _assert_close_step(bundled_llm, module, fused, 1e-3)


def _assert_close_step(llm: LLM, module, fused, relative: float) -> None:
    """Hidden states within `relative` (norm of the difference over the norm), and the same
    greedy choice for every row."""
    (h_mod, _), (h_fused, _) = module, fused
    assert (h_fused - h_mod).norm() / h_mod.norm() < relative
    model = llm.engine.runner.model
    with torch.inference_mode():
        top_mod = model.compute_logits(h_mod).argmax(-1)
        top_fused = model.compute_logits(h_fused).argmax(-1)
    assert torch.equal(top_fused, top_mod)


NAMES = ("qkv", "o", "gate_up", "down")


def _linears(llm: LLM) -> list:
    return [
        getattr(layer, name + "_proj") for layer in llm.engine.runner.model.layers for name in NAMES
    ]


STEPS = {  # (cached tokens, new tokens) per sequence
    "decode": ([3, 33, 17], [1, 1, 1]),
    "prompt chunks": ([3, 0, 17, 40], [1, 20, 5, 37]),
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_biased_qkv_models_match_the_module_path(qwen_folder, quantization, step):
    llm = LLM(
        str(qwen_folder), quantization=quantization, enable_prefix_caching=False,
        num_kv_blocks=64, block_size=16, kv_cache_dtype="float32",
    )  # fmt: skip
    for lin in _linears(llm):  # float32 activations on both paths (see float_activations)
        lin.int8_activations = False
        lin.max_direct_rows = 64  # the direct kernel on both paths (tiles round to bf16)
    context_lens, new_lens = STEPS[step]
    module, fused, calls = _decode_both_ways(llm, context_lens, new_lens=new_lens)
    assert calls > 0
    _assert_same_step(module, fused)


def test_odd_head_dim_prompt_chunks_match_the_module_path(tmp_path, bundled_folder):
    """head_dim 24 (not a multiple of 16): the chunk kernel's portable path."""
    folder = make_tiny_llama(
        tmp_path / "tiny-hd24", bundled_folder, num_heads=6, num_kv_heads=2, head_dim=24,
        num_layers=2,
    )  # fmt: skip
    llm = LLM(
        str(folder), quantization="int8", enable_prefix_caching=False, num_kv_blocks=64,
        block_size=16, kv_cache_dtype="float32",
    )  # fmt: skip
    for lin in _linears(llm):
        lin.int8_activations = False
        lin.max_direct_rows = 64
    module, fused, calls = _decode_both_ways(llm, [0, 21, 5], new_lens=[35, 18, 1])
    assert calls > 0
    _assert_same_step(module, fused)


def test_greedy_generation_is_unchanged_with_prompt_steps_fused(bundled_llm):
    model = bundled_llm.engine.runner.model
    prompts = [{"prompt_token_ids": list(range(1000, 1000 + n))} for n in (60, 9, 25)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def run(enabled: bool) -> list[list[int]]:
        model.fused_decode_enabled = enabled
        try:
            outs = bundled_llm.generate(prompts, params, use_tqdm=False)
        finally:
            model.fused_decode_enabled = True
        return [o.outputs[0].token_ids for o in outs]

    module = run(False)
    previous = model._fused[1] if model._fused else None
    before = previous.num_calls if previous else 0
    fused = run(True)
    current = model._fused[1]
    calls = current.num_calls - (before if current is previous else 0)
    assert fused == module
    # Three prompts prefilled in one step (fused too), then 23 decode-only steps, each fused.
    assert calls == 24, calls


def test_float_models_keep_the_module_path(tiny_folder):
    llm = LLM(str(tiny_folder), quantization="none", enable_prefix_caching=False)
    llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=4), use_tqdm=False)
    assert llm.engine.runner.model._fused is None
