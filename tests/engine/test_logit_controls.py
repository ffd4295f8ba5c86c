"""Grammar bitmasks, logit_bias, allowed_token_ids and bad_words in the sampler, against
bit-by-bit and token-by-token references (hypothesis)."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from triode.engine.sampling.logit_controls import (
    apply_logit_controls,
    apply_token_bitmask,
    banned_next_tokens,
    unpack_bitmask,
)
from triode.engine.sampling.sampler import RowBitmask, Sampler, SamplingRow
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.sampling.structured_outputs import StructuredOutputsParams

NEG_INF = float("-inf")


def row(params: SamplingParams, output=()) -> SamplingRow:
    return SamplingRow(params, [0], list(output), eos_token_id=2, generator=None)


words_strategy = st.integers(min_value=1, max_value=4).flatmap(
    lambda rows: st.integers(min_value=1, max_value=5).flatmap(
        lambda width: st.lists(
            st.lists(st.integers(-(2**31), 2**31 - 1), min_size=width, max_size=width),
            min_size=rows,
            max_size=rows,
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(words=words_strategy, vocab_delta=st.integers(-40, 40))
def test_unpack_bitmask_matches_bit_by_bit_reference(words, vocab_delta):
    width = len(words[0])
    vocab = max(1, width * 32 + vocab_delta)
    tensor = torch.tensor(words, dtype=torch.int32)
    got = unpack_bitmask(tensor, vocab, torch.device("cpu"))
    expected = [
        [i < width * 32 and bool((w[i // 32] >> (i % 32)) & 1) for i in range(vocab)] for w in words
    ]
    assert got.tolist() == expected


@settings(max_examples=40, deadline=None)
@given(words=words_strategy, data=st.data())
def test_bitmask_only_touches_its_rows(words, data):
    width = len(words[0])
    vocab = width * 32
    num_rows = len(words) + data.draw(st.integers(0, 3))
    row_ids = data.draw(st.permutations(range(num_rows)))[: len(words)]
    logits = torch.randn(num_rows, vocab)
    out = logits.clone()
    apply_token_bitmask(out, list(row_ids), torch.tensor(words, dtype=torch.int32))
    for r in range(num_rows):
        if r not in row_ids:
            assert torch.equal(out[r], logits[r])
            continue
        w = words[row_ids.index(r)]
        for t in range(vocab):
            allowed = (w[t // 32] >> (t % 32)) & 1
            assert out[r, t] == (logits[r, t] if allowed else NEG_INF)


def naive_banned(sequences: list[list[int]], output: list[int]) -> set[int]:
    banned = set()
    for seq in sequences:
        k = len(seq) - 1
        if k == 0 or (len(output) >= k and output[len(output) - k :] == seq[:-1]):
            banned.add(seq[-1])
    return banned


@settings(max_examples=100, deadline=None)
@given(
    sequences=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=3), max_size=4),
    output=st.lists(st.integers(0, 5), max_size=6),
)
def test_bad_words_ban_the_token_that_would_complete_a_word(sequences, output):
    assert set(banned_next_tokens(sequences, output)) == naive_banned(sequences, output)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_logit_controls_match_a_per_token_reference(data):
    vocab = 12
    num_rows = data.draw(st.integers(1, 4))
    params, outputs = [], []
    for _ in range(num_rows):
        bias = data.draw(
            st.none()
            | st.dictionaries(st.integers(0, vocab - 1), st.sampled_from([-100, -3.5, 0, 2, 100]))
        )
        allowed = data.draw(st.none() | st.lists(st.integers(0, vocab - 1), min_size=1))
        bad = data.draw(
            st.none()
            | st.lists(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=2), min_size=1)
        )
        params.append(
            SamplingParams(
                logit_bias=bias or None, allowed_token_ids=allowed, bad_words_token_ids=bad
            )
        )
        outputs.append(data.draw(st.lists(st.integers(0, vocab - 1), max_size=3)))
    logits = torch.randn(num_rows, vocab)
    got = logits.clone()
    apply_logit_controls(got, params, outputs)
    for r, p in enumerate(params):
        banned = naive_banned(p.bad_words_token_ids or [], outputs[r])
        for t in range(vocab):
            expected = logits[r, t].item()
            bias = (p.logit_bias or {}).get(t, 0)
            if (
                (p.allowed_token_ids is not None and t not in p.allowed_token_ids)
                or t in banned
                or bias == -100
            ):
                expected = NEG_INF
            else:
                expected += bias
            assert got[r, t].item() == pytest.approx(expected), (r, t)


def test_greedy_follows_plus_100_and_never_takes_minus_100():
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0], [5.0, 4.0, 0.0, 0.0]])
    rows = [
        row(SamplingParams(temperature=0, logit_bias={3: 100})),
        row(SamplingParams(temperature=0, logit_bias={0: -100})),
    ]
    assert Sampler()(logits.clone(), rows).token_ids == [3, 1]
    # A banned token is never drawn, however hot the sampling.
    hot = [row(SamplingParams(temperature=5.0, logit_bias={0: -100, 1: -100})) for _ in range(64)]
    drawn = Sampler()(torch.zeros(64, 4), hot).token_ids
    assert not {0, 1} & set(drawn)


def test_sampler_applies_the_bitmask_before_everything_and_keeps_raw_logprobs():
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0], [5.0, 4.0, 0.0, 0.0]])
    only_2 = torch.tensor([[1 << 2]], dtype=torch.int32)
    rows = [row(SamplingParams(temperature=0, logprobs=1)), row(SamplingParams(temperature=0))]
    out = Sampler()(logits.clone(), rows, RowBitmask([0], only_2))
    assert out.token_ids == [2, 0]
    raw = logits.log_softmax(-1)
    assert out.logprobs[0][0] == pytest.approx(raw[0, 2].item())  # of the raw distribution


def test_min_tokens_does_not_fight_a_finished_grammar():
    # The grammar allows only EOS (2); min_tokens would ban it: the grammar wins.
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0]])
    rows = [row(SamplingParams(temperature=0, min_tokens=5))]
    eos_only = torch.tensor([[1 << 2]], dtype=torch.int32)
    assert Sampler()(logits, rows, RowBitmask([0], eos_only)).token_ids == [2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
        ({"bad_words": [""]}, "bad_words"),
    ],
)
def test_bad_values_name_their_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        SamplingParams(**kwargs)


def test_logit_bias_keys_from_json_become_ints_and_params_pickle():
    params = SamplingParams(
        logit_bias={"7": 2.5},
        allowed_token_ids=[1, 2],
        bad_words=["x"],
        structured_outputs=StructuredOutputsParams(json={"type": "object"}),
    )
    assert params.logit_bias == {7: 2.5}
    again = pickle.loads(pickle.dumps(params))
    assert again == params and again.structured_outputs.json == {"type": "object"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"json": {"type": "object"}, "regex": "a"},
        {"json": "{not json"},
        {"json": [1]},
        {"choice": []},
        {"choice": ["a", 3]},
        {"regex": ""},
    ],
)
def test_structured_outputs_need_exactly_one_valid_constraint(kwargs):
    with pytest.raises(ValueError, match=r"^structured_outputs"):
        StructuredOutputsParams(**kwargs)


def test_structured_outputs_cache_key_keeps_property_order():
    a = StructuredOutputsParams(json={"properties": {"x": {}, "y": {}}})
    b = StructuredOutputsParams(json={"properties": {"y": {}, "x": {}}})
    assert a.cache_key() != b.cache_key()
    assert (
        a.cache_key() == StructuredOutputsParams(json='{"properties":{"x":{},"y":{}}}').cache_key()
    )
