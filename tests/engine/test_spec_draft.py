"""Speculative decoding with a draft model (issue 16) on the real bundled model: greedy output
identical with and without the draft, in one batch with chunked prefill and preemption forced,
with the draft being the served model itself (acceptance near 1: the draft's own KV cache
catches up and rolls back correctly) and an int8 copy of it; the draft's blocks all come back;
seeded sampling with n>1 and aborts on tiny models; the vocabulary check; the configuration."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.engine.helpers import generate_speculating
from tests.engine.test_spec_decode import PASSAGE, _chat
from triode.engine import LLM, SamplingParams
from triode.engine.config import EngineConfig
from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.draft_model import DraftModelProposer, load_draft_proposer
from triode.kernels import cpu_quant


@pytest.fixture(scope="module")
def llm(bundled_folder) -> LLM:
    # Chunked prefill (64-token budget) and a pool of 12 blocks of 16: the batch below does
    # not fit, so requests are preempted and recomputed while others speculate. Float weights
    # (the draft takes the served model's setting): as for n-gram, the subject is equality
    # across batch shapes.
    llm = LLM(
        quantization="none",
        max_num_batched_tokens=64,
        num_kv_blocks=12,
        quant_direct_max_rows=64,  # the int8 draft below: no timing of its kernels at start
        speculative_config={
            "method": "draft_model",
            "model": str(bundled_folder),
            "num_speculative_tokens": 3,
            "disable_by_batch_size": 64,
            "draft_num_kv_blocks": 48,
        },
    )
    llm.engine.enable_invariant_checks()  # the draft's bookkeeping is checked every step too
    return llm


def _prompts_and_params(llm: LLM) -> tuple[list[list[int]], list[SamplingParams]]:
    tokenizer = llm.get_tokenizer()
    copy = _chat(llm, f"Repeat this text exactly, word for word:\n\n{PASSAGE}")
    quote = _chat(llm, f"{PASSAGE}\n\nQuote the second sentence of the text above.")
    short = _chat(llm, "Say hello.")
    params = [
        # A stop token, max_tokens and a stop string inside bursts of accepted drafts;
        # min_tokens masks eos at some positions of a verification (and of the draft's rows).
        SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[tokenizer.encode(" wick")[0]]),
        SamplingParams(temperature=0, max_tokens=21),
        SamplingParams(temperature=0, max_tokens=24, stop=["great lens"]),
        SamplingParams(temperature=0, max_tokens=14, min_tokens=12),
    ]
    return [copy, quote, copy, short], params


@pytest.fixture(scope="module")
def without_speculation(llm) -> list:
    """The batch's outputs without speculation (what every draft must reproduce)."""
    return generate_speculating(llm, *_prompts_and_params(llm), speculate=False)


def _check_identical(llm: LLM, want: list, min_acceptance: float) -> None:
    engine = llm.engine
    stats = engine.scheduler.spec_stats
    before = stats.copy()
    preemptions_before = engine.scheduler.num_preemptions
    prompts, params = _prompts_and_params(llm)
    with_draft = generate_speculating(llm, prompts, params, speculate=True)
    num_drafted = stats.num_draft_tokens - before.num_draft_tokens
    num_accepted = stats.num_accepted_tokens - before.num_accepted_tokens
    assert stats.num_drafts - before.num_drafts > 10
    assert num_accepted >= min_acceptance * num_drafted, (num_accepted, num_drafted)
    assert engine.scheduler.num_preemptions > preemptions_before
    assert with_draft == want
    assert [r for _, _, r in with_draft][:3] == ["stop", "length", "stop"], with_draft
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks
    draft = engine.proposer
    assert isinstance(draft, DraftModelProposer)
    assert draft.kv.num_free_blocks == draft.kv.num_blocks and not draft.kv.seq_ids()
    assert draft.num_failures == 0


def test_greedy_output_is_identical_with_the_model_as_its_own_draft(llm, without_speculation):
    # The same weights propose what the model then picks: nearly every draft is accepted,
    # which only happens when the draft's cache holds exactly the K/V of the real tokens.
    _check_identical(llm, without_speculation, min_acceptance=0.9)


@pytest.mark.skipif(not cpu_quant.is_available(), reason="no C compiler for int8 kernels")
def test_greedy_output_is_identical_with_an_int8_copy_as_draft(
    llm, without_speculation, bundled_folder
):
    engine = llm.engine
    float_draft = engine.proposer
    spec = SpeculativeConfig(
        method="draft_model",
        model=str(bundled_folder),
        num_speculative_tokens=3,
        disable_by_batch_size=64,
        quantization="int8",
        draft_num_kv_blocks=48,
    )
    engine.proposer = load_draft_proposer(
        engine.config, spec, engine.tokenizer, engine.vocab_size, engine.max_model_len, 12
    )
    try:
        assert engine.proposer.runner.weights_info.method == "int8"
        # kv_cache_dtype auto, as for a served model: a quantized draft's cache is float16.
        assert engine.proposer.runner.kv_caches[0][0].dtype == torch.float16
        _check_identical(llm, without_speculation, min_acceptance=0.5)
    finally:
        engine.proposer = float_draft


# ---- tiny models: sampling, n>1, aborts, the vocabulary check ------------------------------


@pytest.fixture(scope="module")
def draft_folder(tmp_path_factory, bundled_folder):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-draft"), bundled_folder, seed=1)


def _tiny_llm(tiny_folder, draft_folder, **spec) -> LLM:
    llm = LLM(
        model=str(tiny_folder),
        block_size=4,
        num_kv_blocks=64,
        max_num_batched_tokens=16,
        speculative_config={"method": "draft_model", "model": str(draft_folder), **spec},
    )
    llm.engine.enable_invariant_checks()
    return llm


def test_seeded_sampling_with_n_and_aborts_releases_the_draft_cache(tiny_folder):
    # Four sequences once the n=2 request forks: speculation pauses (the draft's cache is
    # freed) until one finishes, then the others catch up in the draft and speculate.
    # NOTE: the model is its own draft: its drafts are accepted, so the output is made of
    # draws from the drafts' own generators (an unrelated draft's would all be rejected).
    llm = _tiny_llm(tiny_folder, tiny_folder, draft_num_kv_blocks=24, disable_by_batch_size=4)
    engine = llm.engine
    draft = engine.proposer
    prompts = [{"prompt_token_ids": [300 + i % 7 for i in range(n)]} for n in (9, 14, 5)]
    params = [
        SamplingParams(temperature=0.9, top_p=0.95, seed=5, n=2, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=1.0, top_k=20, presence_penalty=0.5, seed=11, max_tokens=15),
        SamplingParams(temperature=0, max_tokens=18, ignore_eos=True),
    ]

    def tokens() -> list[list[list[int]]]:
        # NOTE: the same schedule each time (no prefix-cache hits in the second run): a seeded
        # request's draws depend on how many drafts each of its steps verified.
        engine.scheduler.kv.reset_prefix_cache()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [[c.token_ids for c in o.outputs] for o in outs]

    first = tokens()
    stats = engine.scheduler.spec_stats
    assert stats.num_drafts > 0 and stats.num_steps_paused > 0
    assert stats.num_accepted_tokens > 0.5 * stats.num_draft_tokens
    assert draft.kv.num_free_blocks == draft.kv.num_blocks
    assert tokens() == first  # seeded and greedy: reproducible, every sample
    assert len(first[0]) == 2 and all(len(t) == 20 for t in first[0])

    # Aborted mid-way, with the draft holding blocks: they come back at once.
    engine.add_request("a", prompts[1]["prompt_token_ids"], params[0])
    engine.add_request("b", prompts[0]["prompt_token_ids"], params[2])
    for _ in range(6):
        engine.step()
    assert draft.kv.seq_ids()
    engine.abort(["a", "b"])
    assert draft.kv.num_free_blocks == draft.kv.num_blocks and not draft.kv.seq_ids()
    assert not draft._generators


def test_a_draft_with_another_vocabulary_is_refused(
    tiny_folder, bundled_folder, tokenizer, tmp_path
):
    small = make_tiny_llama(tmp_path / "v128", bundled_folder, vocab_size=128)
    spec = SpeculativeConfig(method="draft_model", model=str(small))
    with pytest.raises(ValueError, match=r"128 logits per token.*share the served model's"):
        load_draft_proposer(EngineConfig(model=str(tiny_folder)), spec, tokenizer, 49152, 64, 8)
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_folder, other)
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[400:402]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swap their tokens
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"another tokenizer .*\(2 of 49152 token ids differ\)"):
        LLM(model=str(tiny_folder), speculative_config={"model": str(other)})


def test_draft_model_configuration():
    spec = EngineConfig(
        speculative_config={"model": "/m", "quantization": "int4", "draft_num_kv_blocks": 8}
    ).speculative
    assert spec == SpeculativeConfig(
        method="draft_model", model="/m", quantization="int4", draft_num_kv_blocks=8
    )
    for bad in (
        {"model": "/m", "quantization": "int3"},
        {"model": "/m", "draft_num_kv_blocks": 0},
        {"method": "ngram", "quantization": "int4"},
        {"method": "draft_model"},
    ):
        with pytest.raises(ValueError, match="speculative_config"):
            EngineConfig(speculative_config=bad)


def test_a_failing_draft_costs_only_its_drafts(tiny_folder, draft_folder, monkeypatch):
    llm = _tiny_llm(tiny_folder, draft_folder)
    engine = llm.engine
    draft = engine.proposer
    prompt = {"prompt_token_ids": [300, 301, 302, 303, 304, 305]}
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    calls = {"n": 0}
    forward = draft._forward

    def failing_twice(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (2, 7):  # a second pass, then a first one
            raise RuntimeError("the draft broke")
        return forward(*args, **kwargs)

    monkeypatch.setattr(draft, "_forward", failing_twice)
    (out,) = llm.generate(prompt, params, use_tqdm=False)
    assert draft.num_failures == 2 and engine.scheduler.spec_stats.num_drafts > 0
    assert draft.kv.num_free_blocks == draft.kv.num_blocks
    engine.proposer = None
    (want,) = llm.generate(prompt, params, use_tqdm=False)
    assert out.outputs[0].token_ids == want.outputs[0].token_ids
