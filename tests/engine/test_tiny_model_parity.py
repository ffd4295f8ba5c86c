"""Our Llama implementation against transformers on tiny random-weight models: greedy tokens
agree token for token, batched, chunked and preempted, across head layouts and families."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_llama
from triode.engine import LLM, SamplingParams

PROMPTS = [
    [5, 9, 200, 31],
    list(range(1000, 1037)),
    [42] * 3,
    list(range(7000, 7090, 3)),
    [17],
]
NEW_TOKENS = 12


def hf_greedy(folder, prompt: list[int]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "variant",
    [
        dict(num_heads=4, num_kv_heads=2),  # GQA
        dict(num_heads=4, num_kv_heads=4, tie=False),  # MHA, separate LM head
        dict(num_heads=6, num_kv_heads=2, model_type="qwen2"),  # q/k/v biases
        dict(num_heads=8, num_kv_heads=1, model_type="mistral", head_dim=8),
    ],
    ids=["llama-gqa", "llama-mha-untied", "qwen2-bias", "mistral-mqa"],
)
def test_greedy_tokens_match_transformers(tmp_path, bundled_folder, variant):
    folder = make_tiny_llama(tmp_path / "model", bundled_folder, **variant)
    want = [hf_greedy(folder, p) for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]

    llm = LLM(model=str(folder), block_size=4, num_kv_blocks=256)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == want

    # Tiny token budget and KV pool: chunked prefill and preemption, same tokens.
    llm = LLM(model=str(folder), block_size=4, num_kv_blocks=16, max_num_batched_tokens=8)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == want
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.scheduler.kv.num_free_blocks == 16
