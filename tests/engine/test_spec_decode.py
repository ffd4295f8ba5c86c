"""Speculative decoding on the real bundled model (issue 16): greedy output identical with and
without speculation, in one batch with chunked prefill and preemption forced, stop strings,
stop ids, max_tokens and min_tokens cut exactly inside a burst; the n-gram proposer against a
brute-force reference; the configuration; the load switch."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.engine.helpers import generate_speculating
from triode.engine import LLM, SamplingParams
from triode.engine.config import EngineConfig
from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.ngram import NgramProposer

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the "
    "wick, polished the great lens, and wound the clockwork that turned the beam across the "
    "bay. Ships passing in the night counted the flashes and knew exactly where they were."
)


def _chat(llm: LLM, text: str) -> list[int]:
    from triode.engine.llm import apply_chat_template

    return apply_chat_template(llm.get_tokenizer(), [{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def llm() -> LLM:
    # Chunked prefill (64-token budget) and a pool of 16 blocks of 16: the batch below does
    # not fit, so requests are preempted and recomputed while others speculate. Float weights:
    # the subject is equality with and without speculation, i.e. across batch shapes, which
    # the default quantized weights give only with every step on one kernel.
    return LLM(
        quantization="none",
        max_num_batched_tokens=64,
        num_kv_blocks=16,
        speculative_config={
            "method": "ngram",
            "num_speculative_tokens": 5,
            "prompt_lookup_min": 2,
            "prompt_lookup_max": 4,
            "disable_by_batch_size": 64,
        },
    )


def test_greedy_output_is_identical_with_and_without_speculation(llm):
    tokenizer = llm.get_tokenizer()
    copy = _chat(llm, f"Repeat this text exactly, word for word:\n\n{PASSAGE}")
    quote = _chat(llm, f"{PASSAGE}\n\nQuote the second sentence of the text above.")
    short = _chat(llm, "Say hello.")
    prompts = [copy, quote, copy, short]
    params = [
        # A stop token, max_tokens and a stop string inside bursts of accepted drafts;
        # min_tokens masks eos at some positions of a verification and not others.
        SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[tokenizer.encode(" wick")[0]]),
        SamplingParams(temperature=0, max_tokens=27),
        SamplingParams(temperature=0, max_tokens=30, stop=["great lens"]),
        SamplingParams(temperature=0, max_tokens=28, min_tokens=20),
    ]
    stats = llm.engine.scheduler.spec_stats
    drafts_before, preemptions_before = stats.num_drafts, llm.engine.scheduler.num_preemptions
    accepted_before = stats.num_accepted_tokens
    with_spec = generate_speculating(llm, prompts, params, speculate=True)
    assert stats.num_drafts > drafts_before
    assert stats.num_accepted_tokens - accepted_before > 30
    assert llm.engine.scheduler.num_preemptions > preemptions_before
    without = generate_speculating(llm, prompts, params, speculate=False)
    assert with_spec == without
    reasons = [r for _, _, r in with_spec]
    assert reasons[:3] == ["stop", "length", "stop"], with_spec
    assert "great lens" not in with_spec[2][1] and len(with_spec[1][0]) == 27
    assert len(with_spec[3][0]) >= 20
    kv = llm.engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks


def test_streamed_deltas_carry_bursts_and_the_same_text(llm):
    engine = llm.engine
    prompt = _chat(llm, f"Repeat this text exactly, word for word:\n\n{PASSAGE}")
    engine.add_request("burst", prompt, SamplingParams(temperature=0, max_tokens=24))
    deltas = []
    while engine.has_unfinished_requests():
        deltas += engine.step()
    assert max(len(d.token_ids) for d in deltas) > 1  # several tokens in one step
    tokens = [t for d in deltas for t in d.token_ids]
    text = "".join(d.text for d in deltas)
    (want,) = generate_speculating(
        llm, [prompt], [SamplingParams(temperature=0, max_tokens=24)], False
    )
    assert (tokens, text) == want[:2]


# ---- the n-gram proposer -----------------------------------------------------------------


def _reference_propose(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    for n in range(max_n, min_n - 1, -1):
        if len(tokens) <= n:
            continue
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


@given(
    tokens=st.lists(st.integers(0, 4), max_size=40),
    min_n=st.integers(1, 3),
    extra=st.integers(0, 2),
    k=st.integers(1, 5),
)
def test_ngram_proposer_matches_a_brute_force_search(tokens, min_n, extra, k):
    proposer = NgramProposer(min_n, min_n + extra, k)
    assert proposer.propose(tokens) == _reference_propose(tokens, min_n, min_n + extra, k)


def test_ngram_proposer_prefers_the_longest_and_latest_match():
    proposer = NgramProposer(1, 3, 3)
    # "7 8" occurs twice; "6 7 8" only once: the longer one wins even though it is earlier.
    assert proposer.propose([6, 7, 8, 1, 2, 3, 9, 7, 8, 4, 5, 6, 7, 8]) == [1, 2, 3]
    assert proposer.propose([7, 8, 1, 7, 8, 2, 0, 7, 8]) == [2, 0, 7]
    assert proposer.propose([1, 2, 3]) == []


# ---- configuration and the load switch -----------------------------------------------------


def test_speculative_config_is_spelled_as_vllm_spells_it():
    text = '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5}'
    config = EngineConfig(speculative_config=text)
    spec = config.speculative
    assert spec == SpeculativeConfig("ngram", 3, 2, 5)
    assert json.loads(EngineConfig(speculative_config={"method": "ngram"}).speculative_config)
    assert EngineConfig().speculative is None
    for bad in ('{"method": "eagle"}', '{"num_speculative_tokens": 0}', "[1]", "{", '{"x": 1}'):
        with pytest.raises(ValueError, match="speculative_config"):
            EngineConfig(speculative_config=bad)


def test_speculation_pauses_under_load_and_resumes_when_it_drops(tiny_folder):
    llm = LLM(
        model=str(tiny_folder),
        block_size=4,
        num_kv_blocks=256,
        speculative_config={"method": "ngram", "prompt_lookup_min": 1, "disable_by_batch_size": 3},
    )
    prompt = [300, 301, 302, 300, 301, 302, 300, 301]
    params = [SamplingParams(temperature=0, max_tokens=m) for m in (2, 3, 30)]
    llm.generate([{"prompt_token_ids": prompt}] * 3, params, use_tqdm=False)
    stats = llm.engine.scheduler.spec_stats
    # Three requests: paused; after two finish, the last one speculates alone.
    assert stats.num_steps_paused >= 2
    assert stats.num_steps_speculating > 0 and stats.num_drafts > 0


def test_metrics_show_proposals_and_acceptance_per_position():
    from triode.engine.metrics import EngineMetrics, EngineStats
    from triode.engine.spec_decode.stats import SpecDecodeStats

    metrics = EngineMetrics("m")
    spec = SpecDecodeStats()
    spec.record(4, 2)
    metrics.update_engine_state(EngineStats(spec_decode=spec.copy()))
    spec.record(3, 3)
    metrics.update_engine_state(EngineStats(spec_decode=spec.copy()))
    text = metrics.render().decode()
    assert 'triode:spec_decode_num_drafts_total{model_name="m"} 2.0' in text
    assert 'triode:spec_decode_num_draft_tokens_total{model_name="m"} 7.0' in text
    assert 'triode:spec_decode_num_accepted_tokens_total{model_name="m"} 5.0' in text
    per_pos = 'triode:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="%d"}'
    assert f"{per_pos % 0} 2.0" in text and f"{per_pos % 2} 1.0" in text
    assert spec.position_rates() == [1.0, 1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    "controls",
    [{"logit_bias": {5: -100.0}}, {"allowed_token_ids": list(range(250, 400))}],
)
def test_requests_with_logit_controls_do_not_speculate(tiny_folder, controls):
    # NOTE: drafts are verified with the sampler's plain row transforms only; a request whose
    # tokens are also shaped by logit controls or a grammar must decode one token a step.
    llm = LLM(
        model=str(tiny_folder),
        block_size=4,
        num_kv_blocks=256,
        speculative_config={"method": "ngram", "prompt_lookup_min": 1},
    )
    prompt = [300, 301, 302, 300, 301, 302, 300, 301]
    stats = llm.engine.scheduler.spec_stats
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, **controls)
    constrained = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert stats.num_drafts == 0
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompt}], plain, use_tqdm=False)
    assert stats.num_drafts > 0  # the same prompt speculates without the controls
    llm.engine.proposer = None
    alone = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert constrained[0].outputs[0].token_ids == alone[0].outputs[0].token_ids
