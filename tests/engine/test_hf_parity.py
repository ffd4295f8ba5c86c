"""Greedy outputs of the bundled SmolLM2-135M-Instruct agree token for token with transformers'
`generate()` on the same float32 weights: chat and plain prompts, short and 500+ tokens,
multi-byte text; all in one batch, then again with a 64-token step budget and a 48-block KV
pool, which forces chunked prefill and preemption.

Ties: float32 sums in a different order (fused matmuls, paged attention) can flip the argmax
where the two best logits are nearly equal. At the first position where our token differs, the
test looks at transformers' own logits there: if our token is its runner-up and the top two are
within TIE_MARGIN, the sequences have legitimately forked and the rest is not compared.
Anything else is a failure.

The float tests pin `quantization="none"` (the default serves the file's own Q4_1 blocks); the
quantized weights' own parity test runs every step on the direct kernel, which computes the
file's numbers exactly with float32 activations.
"""

from __future__ import annotations

import pytest
import torch

from triode.engine import LLM, SamplingParams
from triode.engine.llm import apply_chat_template

pytestmark = pytest.mark.slow

TIE_MARGIN = 0.05
MAX_TOKENS = 40

STORY = (
    "The lighthouse keeper had lived on the island for thirty years. Every evening he climbed "
    "the one hundred and twelve steps to light the lamp, and every morning he wrote in his log "
    "the weather, the ships that passed, and the birds that rested on the rocks. "
)
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
    [{"role": "user", "content": "Translate to English: 日本語は難しいですが、面白いです。"}],
    [{"role": "user", "content": "Summarize this: " + STORY * 6}],  # ~350 tokens
]
PLAIN = [
    "The quick brown fox",
    "def fibonacci(n):\n    ",
    "Zürich, São Paulo and Kraków are cities where",
    "Emoji story: 🐶🏠🌧️ then",
    STORY * 11,  # ~570 tokens
    "1, 2, 3, 5, 8, 13,",
    "Ελληνικά: Η γλώσσα",
]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    ids = [apply_chat_template(tokenizer, c) for c in CHATS]
    ids += [tokenizer.encode(p, add_special_tokens=False) for p in PLAIN]
    assert len(ids) >= 10 and max(len(p) for p in ids) >= 500
    return ids


@pytest.fixture(scope="module")
def reference(bundled_folder, prompts):
    """transformers' greedy tokens and per-step logits for each prompt, one at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(bundled_folder), dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            tokens = out.sequences[0, len(prompt) :].tolist()
            results.append((tokens, [step[0] for step in out.logits]))
    return results


def assert_agrees(ours: list[int], theirs: list[int], logits: list[torch.Tensor]) -> str:
    """Equal, or equal up to a near-tie of transformers' top two logits. Returns the verdict."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a == b:
            continue
        top2 = torch.topk(logits[i], 2)
        gap = float(top2.values[0] - top2.values[1])
        assert a == int(top2.indices[1]) and gap < TIE_MARGIN, (
            f"diverged at token {i}: ours {a}, transformers {b} (top-2 gap {gap:.4f})"
        )
        return f"tie at {i} (gap {gap:.4f})"
    assert len(ours) == len(theirs), f"lengths differ: {len(ours)} vs {len(theirs)}"
    return "equal"


def test_one_batch_matches_transformers(prompts, reference):
    llm = LLM(kv_cache_memory_gib=0.25, quantization="none")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    verdicts = [assert_agrees(o.outputs[0].token_ids, *ref) for o, ref in zip(outs, reference)]
    assert verdicts.count("equal") >= len(prompts) - 1, verdicts
    assert llm.engine.scheduler.kv.num_free_blocks == llm.engine.runner.num_blocks


def test_chunked_prefill_and_preemption_match_transformers(prompts, reference):
    llm = LLM(max_num_batched_tokens=64, num_kv_blocks=48, quantization="none")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    verdicts = [assert_agrees(o.outputs[0].token_ids, *ref) for o, ref in zip(outs, reference)]
    assert verdicts.count("equal") >= len(prompts) - 1, verdicts
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.scheduler.kv.num_free_blocks == 48


def test_gguf_weights_as_they_are_match_transformers(prompts, reference):
    """The file's quantized weights through the direct kernel (float32 activations) give
    transformers' tokens on the same file's de-quantized weights."""
    llm = LLM(kv_cache_memory_gib=0.25, quantization="gguf", quant_direct_max_rows=4096)
    assert llm.engine.runner.weights_info.method == "gguf"
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    verdicts = [assert_agrees(o.outputs[0].token_ids, *ref) for o, ref in zip(outs, reference)]
    assert verdicts.count("equal") >= len(prompts) - 1, verdicts


def test_text_matches_the_full_decode(tokenizer, prompts):
    llm = LLM(kv_cache_memory_gib=0.25, quantization="none")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for out in outs:
        completion = out.outputs[0]
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
