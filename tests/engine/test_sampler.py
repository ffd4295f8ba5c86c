"""The sampler's masks, penalties and seeded reproducibility, on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from triode.engine.sampling.sampler import (
    Sampler,
    SamplingRow,
    apply_penalties,
    apply_top_k_top_p_min_p,
)
from triode.engine.sampling.sampling_params import SamplingParams


def row(params: SamplingParams, output=(), prompt=(0,), gen=None) -> SamplingRow:
    return SamplingRow(params, list(prompt), list(output), eos_token_id=2, generator=gen)


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(r > float("-inf")).flatten().tolist() for r in logits]


LOGITS = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15], [0.2, 0.2, 0.2, 0.2, 0.2]]))


def test_top_k_keeps_the_k_largest_per_row():
    rows = [row(SamplingParams(top_k=2)), row(SamplingParams(top_k=0))]
    assert kept(apply_top_k_top_p_min_p(LOGITS.clone(), rows)) == [[1, 3], [0, 1, 2, 3, 4]]


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # Row 0 sorted: 0.4, 0.3, 0.15, 0.1, 0.05. p=0.7 -> 0.4+0.3 reaches it: keep {1, 3}.
    # p=0.71 needs the third token too.
    rows = [row(SamplingParams(top_p=0.7)), row(SamplingParams(top_p=1.0))]
    assert kept(apply_top_k_top_p_min_p(LOGITS.clone(), rows))[0] == [1, 3]
    rows = [row(SamplingParams(top_p=0.71)), row(SamplingParams())]
    assert kept(apply_top_k_top_p_min_p(LOGITS.clone(), rows))[0] == [1, 3, 4]


def test_top_p_always_keeps_the_most_likely_token():
    rows = [row(SamplingParams(top_p=0.01)), row(SamplingParams(top_p=0.01))]
    out = kept(apply_top_k_top_p_min_p(LOGITS.clone(), rows))
    assert out[0] == [1] and len(out[1]) == 1


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability():
    # 0.4 * 0.5 = 0.2: keep 0.4 and 0.3 only.
    rows = [row(SamplingParams(min_p=0.5)), row(SamplingParams(min_p=0.5))]
    assert kept(apply_top_k_top_p_min_p(LOGITS.clone(), rows)) == [[1, 3], [0, 1, 2, 3, 4]]


def test_top_k_and_top_p_combine():
    rows = [row(SamplingParams(top_k=3, top_p=0.6)), row(SamplingParams())]
    assert kept(apply_top_k_top_p_min_p(LOGITS.clone(), rows))[0] == [1, 3]


def test_greedy_takes_the_argmax():
    out = Sampler()(LOGITS.clone(), [row(SamplingParams(temperature=0))] * 2)
    assert out.token_ids[0] == 1


def test_sampling_only_draws_unmasked_tokens():
    sampler = Sampler()
    params = SamplingParams(temperature=1.0, top_k=2, seed=None)
    seen = set()
    for _ in range(200):
        seen.update(sampler(LOGITS[:1].clone(), [row(params)]).token_ids)
    assert seen == {1, 3}


def test_sampling_follows_the_distribution():
    logits = LOGITS[:1].repeat(4000, 1)
    out = Sampler()(logits, [row(SamplingParams(temperature=1.0))] * 4000).token_ids
    freq = [out.count(i) / 4000 for i in range(5)]
    assert freq == pytest.approx([0.05, 0.4, 0.1, 0.3, 0.15], abs=0.03)


def test_seeded_rows_reproduce_whatever_the_batch():
    sampler = Sampler()
    logits = torch.randn(3, 1000)

    def draw(seed, batch_logits, position):
        gen = torch.Generator().manual_seed(seed)
        rows = [row(SamplingParams(temperature=1.0))] * batch_logits.shape[0]
        rows[position] = row(SamplingParams(temperature=1.0, seed=seed), gen=gen)
        return [sampler(batch_logits, rows).token_ids[position] for _ in range(5)]

    first = draw(42, logits, 0)
    # Same seed, other neighbours in the batch, other row position: the same draws.
    shuffled = torch.stack([torch.randn(1000), logits[0], torch.randn(1000)])
    assert draw(42, shuffled, 1) == first
    assert draw(43, logits, 0) != first


def test_repetition_penalty_scales_seen_logits_by_sign():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 1.0]])
    apply_penalties(logits, [row(SamplingParams(repetition_penalty=2.0), output=[1], prompt=[0])])
    assert logits.tolist() == [[1.0, -4.0, 2.0, -2.0, 1.0]]


def test_frequency_and_presence_penalties_use_output_counts():
    logits = torch.zeros(1, 5)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    apply_penalties(logits, [row(params, output=[3, 3, 4], prompt=[0, 1])])
    # token 3: 2 * 0.5 + 0.25; token 4: 0.5 + 0.25; prompt tokens are not penalised.
    assert logits.tolist() == [[0.0, 0.0, 0.0, -1.25, -0.75]]


def test_penalties_apply_per_row():
    logits = torch.ones(2, 4)
    rows = [
        row(SamplingParams(frequency_penalty=1.0), output=[0]),
        row(SamplingParams(), output=[0]),
    ]
    apply_penalties(logits, rows)
    assert logits.tolist() == [[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]


def test_min_tokens_bans_eos_until_reached():
    logits = torch.tensor([[0.0, 0.0, 10.0, 0.0]])  # eos (2) is the argmax
    greedy = SamplingParams(temperature=0, min_tokens=2)
    assert Sampler()(logits.clone(), [row(greedy, output=[1])]).token_ids == [0]
    assert Sampler()(logits.clone(), [row(greedy, output=[1, 1])]).token_ids == [2]


def test_logprobs_are_of_the_raw_distribution():
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    params = SamplingParams(temperature=0, logprobs=2, repetition_penalty=5.0)
    out = Sampler()(probs.log(), [row(params, output=[1])])
    chosen, top = out.logprobs[0]
    # The penalty changed the choice (token 2) but not the reported logprobs.
    assert out.token_ids == [2]
    assert chosen == pytest.approx(math.log(0.3), abs=1e-5)
    assert [t for t, _ in top] == [1, 2]
    assert top[0][1] == pytest.approx(math.log(0.6), abs=1e-5)


def test_invalid_params_name_the_field():
    for bad, field in [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-5), "top_k"),
        (dict(min_p=2), "min_p"),
        (dict(n=0), "n"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(presence_penalty=3), "presence_penalty"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(logprobs=99), "logprobs"),
        (dict(stop=[""]), "stop"),
        (dict(min_tokens=5, max_tokens=2), "min_tokens"),
    ]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**bad)


def reference_mask(logits: torch.Tensor, top_k: int, top_p: float) -> list[int]:
    """Top-k then top-p by brute force: sort the whole row."""
    values, index = logits.sort(descending=True)
    if top_k:
        values = values[:top_k]
        index = index[:top_k]
    probs = values.softmax(dim=-1)
    keep = (probs.cumsum(dim=-1) - probs) < top_p
    return sorted(index[keep].tolist())


@pytest.mark.parametrize("spread", [0.5, 4.0])  # flat (needs the full sort) and peaked
@pytest.mark.parametrize("top_k", [0, 40, 600])
def test_top_k_top_p_match_a_full_sort(spread, top_k):
    torch.manual_seed(1)
    logits = torch.randn(4, 5000) * spread
    params = SamplingParams(top_k=top_k, top_p=0.9)
    masked = apply_top_k_top_p_min_p(logits, [row(params)] * 4)
    for i in range(4):
        assert kept(masked[i : i + 1])[0] == reference_mask(logits[i], top_k, 0.9)


def test_sampling_follows_the_top_p_distribution():
    logits = LOGITS[:1].repeat(4000, 1)
    params = SamplingParams(temperature=1.0, top_p=0.8)  # keeps 0.4, 0.3, 0.15 (mass 0.85)
    out = Sampler()(logits, [row(params)] * 4000).token_ids
    freq = [out.count(i) / 4000 for i in range(5)]
    assert freq == pytest.approx([0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85], abs=0.03)


def test_mixed_greedy_and_seeded_rows_in_one_batch():
    logits = torch.randn(3, 300)
    rows = [
        row(SamplingParams(temperature=0)),
        row(
            SamplingParams(temperature=0.9, top_p=0.9, seed=5), gen=torch.Generator().manual_seed(5)
        ),
        row(SamplingParams(temperature=0.9, top_k=20)),
    ]
    out = Sampler()(logits.clone(), rows).token_ids
    assert out[0] == int(logits[0].argmax())
    again = Sampler()(
        logits.clone(),
        [rows[0], row(rows[1].params, gen=torch.Generator().manual_seed(5)), rows[2]],
    )
    assert again.token_ids[1] == out[1]
    assert out[2] in logits[2].topk(20).indices.tolist()
