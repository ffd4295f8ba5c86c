"""A KV cache in another dtype than the model's (`kv_cache_dtype`): the option, where the caches
are allocated and how many blocks a budget holds, the write's rounding, and greedy text against
a float32 cache on the real bundled model."""

from __future__ import annotations

import pytest
import torch

from triode.engine import LLM, EngineConfig, SamplingParams
from triode.kernels.torch_attention import write_kv_cache
from triode.web.cli import Serve, main, parse


def test_bad_kv_cache_dtype_is_a_clear_error(capsys):
    with pytest.raises(
        ValueError, match=r"kv_cache_dtype must be one of \(.*bfloat16.*\), got 'fp8'"
    ):
        EngineConfig(kv_cache_dtype="fp8")  # type: ignore[arg-type]
    command = parse(["serve", "--kv-cache-dtype", "bfloat16"])
    assert isinstance(command, Serve) and command.engine.kv_cache_dtype == "bfloat16"
    assert parse(["serve"]).engine.kv_cache_dtype == "auto"  # type: ignore[union-attr]
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--kv-cache-dtype", "int8"])
    assert exited.value.code == 2
    assert "kv-cache-dtype" in capsys.readouterr().err


@pytest.mark.parametrize("kv", ["float16", "bfloat16"])
def test_write_rounds_as_torch_converts(kv):
    """The cache holds exactly `.to(dtype)` of float32 K/V (round to nearest even), including
    values halfway between two bf16 numbers and ones that overflow float16."""
    dtype = getattr(torch, kv)
    torch.manual_seed(0)
    key = torch.randn(6, 2, 8) * 3
    key.view(-1)[:4] = torch.tensor([1.00390625, 1.01171875, -70000.0, 3e-8])  # ties, big, tiny
    value = torch.randn(6, 2, 8)
    k_cache = torch.zeros(3, 4, 2, 8, dtype=dtype)
    v_cache = torch.zeros(3, 4, 2, 8, dtype=dtype)
    slots = torch.tensor([5, 0, -1, 11, 6, 1])
    write_kv_cache(key, value, k_cache, v_cache, slots)
    keep = slots >= 0
    flat_k, flat_v = k_cache.view(-1, 2, 8), v_cache.view(-1, 2, 8)
    assert torch.equal(flat_k[slots[keep]], key[keep].to(dtype))
    assert torch.equal(flat_v[slots[keep]], value[keep].to(dtype))
    assert flat_k[2].abs().sum() == 0 and flat_v[2].abs().sum() == 0  # a skipped slot


@pytest.mark.parametrize("kv", ["bfloat16", "float16"])
def test_caches_are_allocated_in_that_dtype_and_a_budget_holds_twice_the_blocks(tiny_folder, kv):
    f32 = LLM(model=str(tiny_folder), kv_cache_memory_gib=0.01).engine.runner
    half = LLM(model=str(tiny_folder), kv_cache_memory_gib=0.01, kv_cache_dtype=kv).engine.runner
    assert f32.kv_dtype == torch.float32  # auto on a float model: its own dtype
    assert all(k.dtype == v.dtype == torch.float32 for k, v in f32.kv_caches)
    assert half.kv_dtype == getattr(torch, kv)
    assert all(k.dtype == v.dtype == half.kv_dtype for k, v in half.kv_caches)
    assert half.num_blocks // 2 == f32.num_blocks  # (a budget need not divide evenly)
    assert half.kv_bytes_per_token * 2 == f32.kv_bytes_per_token


def test_auto_is_float16_for_quantized_models_only(tiny_folder):
    quantized = LLM(model=str(tiny_folder), quantization="int8", num_kv_blocks=8).engine.runner
    assert quantized.kv_dtype == torch.float16  # every linear quantized: half the cache bytes
    assert quantized.attention.name == "cpu"  # the C decode kernel reads it
    pinned = LLM(
        model=str(tiny_folder), quantization="int8", num_kv_blocks=8, kv_cache_dtype="float32"
    )
    assert pinned.engine.runner.kv_dtype == torch.float32


@pytest.mark.slow
def test_default_16_bit_cache_generates_the_float32_cache_text_on_the_bundled_model(tokenizer):
    """The bundled (GGUF) model's greedy text with its default cache (float16) and float32."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        for text in ("What is the capital of France?", "Write a haiku about the sea.")
    ]
    params = SamplingParams(temperature=0, max_tokens=32)
    texts = {}
    for kv in ("float32", "auto"):
        llm = LLM(kv_cache_dtype=kv, num_kv_blocks=64, enable_prefix_caching=False)
        expected = torch.float32 if kv == "float32" else torch.float16
        assert llm.engine.runner.kv_caches[0][0].dtype == expected
        texts[kv] = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
    assert texts["auto"] == texts["float32"], texts
