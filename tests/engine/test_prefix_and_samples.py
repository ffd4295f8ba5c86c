"""Prefix caching, n>1 on shared blocks, seeds, and preemption, through the real engine on a
tiny random-weight Llama (with its float32 KV cache, and the ones that share a cache or
recompute it again with a bf16 cache)."""

from __future__ import annotations

import pytest

from triode.engine import LLM, SamplingParams


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def llm(tiny_folder, request):
    return LLM(
        model=str(tiny_folder), block_size=4, num_kv_blocks=128, kv_cache_dtype=request.param
    )


def gen(llm, prompt, params):
    return llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]


def test_second_identical_prompt_hits_the_cache_and_gives_the_same_tokens(llm):
    kv = llm.engine.scheduler.kv
    prompt = list(range(500, 530))  # 30 tokens: 7 full blocks of 4
    params = SamplingParams(temperature=0, max_tokens=6)
    first = gen(llm, prompt, params)
    hits_before = kv.stats.num_hit_tokens
    second = gen(llm, prompt, params)
    assert second.num_cached_tokens == 28
    assert kv.stats.num_hit_tokens - hits_before == 28
    assert second.outputs[0].token_ids == first.outputs[0].token_ids


def test_cache_off_computes_everything(tiny_folder):
    llm = LLM(model=str(tiny_folder), block_size=4, num_kv_blocks=64, enable_prefix_caching=False)
    prompt = list(range(600, 620))
    params = SamplingParams(temperature=0, max_tokens=3)
    a = gen(llm, prompt, params)
    b = gen(llm, prompt, params)
    assert b.num_cached_tokens == 0 and a.outputs[0].token_ids == b.outputs[0].token_ids


def test_n_samples_share_the_prompt_blocks(llm):
    """n=4 holds no more blocks for the prompt than n=1: only generated tokens differ."""
    engine = llm.engine
    kv = engine.scheduler.kv
    assert kv.reset_prefix_cache()
    prompt = list(range(700, 732))  # exactly 8 full blocks
    used = {}
    for n in (1, 4):
        params = SamplingParams(n=n, temperature=1.0, seed=3, max_tokens=4)
        engine.add_request(f"n{n}", prompt, params)
        engine.step()  # the prompt, and the first token of every sample
        samples = [r for r in engine.scheduler.requests.values() if r.group_id == f"n{n}"]
        assert len(samples) == n
        prompt_blocks = {tuple(r.block_ids[:8]) for r in samples}
        assert len(prompt_blocks) == 1  # the same physical prompt blocks for every sample
        used[n] = kv.num_blocks - kv.num_free_blocks
        engine.abort([f"n{n}"])
        assert kv.num_free_blocks == kv.num_blocks
        assert kv.reset_prefix_cache()
    assert used[4] == used[1] == 8


def test_n_samples_are_indexed_and_reproducible_from_seed_plus_index(llm):
    prompt = list(range(800, 811))
    out = gen(llm, prompt, SamplingParams(n=3, temperature=1.0, seed=10, max_tokens=8))
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 and c.finish_reason == "length" for c in out.outputs)
    again = gen(llm, prompt, SamplingParams(n=3, temperature=1.0, seed=10, max_tokens=8))
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    # Sample i of (n, seed s) is what a single request with seed s + i draws.
    for i in range(3):
        single = gen(llm, prompt, SamplingParams(temperature=1.0, seed=10 + i, max_tokens=8))
        assert single.outputs[0].token_ids == out.outputs[i].token_ids
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def roomy_and_tight(folder, prompts, params, tight_blocks, kv_cache_dtype="auto"):
    """Token ids from an engine with room for everything and from one that must preempt."""
    runs = []
    for num_blocks in (256, tight_blocks):
        llm = LLM(
            model=str(folder), block_size=4, num_kv_blocks=num_blocks, kv_cache_dtype=kv_cache_dtype
        )
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        runs.append(([o.outputs[0].token_ids for o in outs], llm.engine.scheduler.num_preemptions))
    return runs


@pytest.mark.parametrize("kv_cache_dtype", ["float32", "bfloat16"])
def test_preempted_requests_resume_with_identical_tokens(tiny_folder, kv_cache_dtype):
    prompts = [list(range(1000 + 50 * i, 1000 + 50 * i + 20 + 3 * i)) for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=20)
    (want, roomy_preemptions), (got, tight_preemptions) = roomy_and_tight(
        tiny_folder, prompts, params, tight_blocks=24, kv_cache_dtype=kv_cache_dtype
    )
    assert tight_preemptions > 0
    assert roomy_preemptions == 0
    assert got == want


def test_seeded_sampling_survives_preemption(tiny_folder):
    prompts = [list(range(2000 + 40 * i, 2000 + 40 * i + 24)) for i in range(5)]
    params = [SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=16) for i in range(5)]
    (want, _), (got, tight_preemptions) = roomy_and_tight(
        tiny_folder, prompts, params, tight_blocks=20
    )
    assert tight_preemptions > 0
    assert got == want


def test_priority_orders_admission(tiny_folder):
    llm = LLM(model=str(tiny_folder), block_size=4, num_kv_blocks=64, max_num_seqs=1)
    params = SamplingParams(temperature=0, max_tokens=2)
    engine = llm.engine
    engine.add_request("background", [5, 6, 7], params, priority=10)
    engine.add_request("urgent", [8, 9, 10], params, priority=-10)
    order = []
    while engine.has_unfinished_requests():
        for delta in engine.step():
            if delta.is_finished:
                order.append(delta.request_id)
    assert order == ["urgent", "background"]


def test_abort_mid_generation_returns_every_block(llm):
    engine = llm.engine
    kv = engine.scheduler.kv
    engine.add_request(
        "x", list(range(900, 950)), SamplingParams(n=2, temperature=1.0, max_tokens=50)
    )
    for _ in range(3):
        engine.step()
    assert kv.num_free_blocks < kv.num_blocks
    deltas = engine.abort(["x"])
    assert sorted(d.index for d in deltas) == [0, 1]
    assert all(d.finish_reason == "abort" for d in deltas)
    assert kv.num_free_blocks == kv.num_blocks and not engine.has_unfinished_requests()


def test_stop_string_ends_the_request_and_is_not_in_the_text(llm):
    base = gen(llm, list(range(3000, 3010)), SamplingParams(temperature=0, max_tokens=12))
    text = base.outputs[0].text
    assert len(text) > 6
    stop = text[3:6]
    out = gen(
        llm, list(range(3000, 3010)), SamplingParams(temperature=0, max_tokens=12, stop=[stop])
    )
    completion = out.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert completion.text == text[: text.index(stop)]
    assert stop not in completion.text
    assert llm.engine.scheduler.kv.num_free_blocks == llm.engine.scheduler.kv.num_blocks
