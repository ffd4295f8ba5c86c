"""Rejection sampling keeps sampled output exact (issue 16): a chi-square test over 20,000 draws
at a fixed context on a tiny model, temperature, top-p and penalties on, comparing the tokens
speculation emits with the non-speculative sampler's; and the same test catching a verifier
whose acceptance is deliberately biased."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.conftest import make_tiny_llama
from triode.engine.sampling.sampler import Sampler, SamplingRow
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.spec_decode import rejection
from triode.engine.spec_decode.rejection import DraftSpan, verify

NUM_DRAWS = 20_000
CHUNK = 5_000
PROMPT = [1, 17, 45, 100, 17, 45, 120, 9]
OUTPUT = [100, 17, 45]
PARAMS = SamplingParams(
    temperature=0.8, top_p=0.9, frequency_penalty=0.4, repetition_penalty=1.2, max_tokens=64
)


@pytest.fixture(scope="module")
def context_logits(tmp_path_factory, bundled_folder) -> tuple[torch.Tensor, list[int]]:
    """The tiny model's logits after the context, after draft 0 and after draft 1, and the
    two drafts (each the most likely token where it is proposed, so acceptance matters)."""
    from transformers import AutoModelForCausalLM

    folder = make_tiny_llama(
        tmp_path_factory.mktemp("tiny-128"), bundled_folder, vocab_size=128, seed=3
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    context = PROMPT + OUTPUT
    drafts: list[int] = []
    with torch.no_grad():
        for _ in range(2):
            logits = model(torch.tensor([context + drafts])).logits[0]
            rows = [_row(OUTPUT + drafts)]
            processed = rejection.process_logits(logits[-1:], rows)
            drafts.append(int(rejection.target_probs(processed, rows).argmax()))
        logits = model(torch.tensor([context + drafts])).logits[0]
    return logits[len(context) - 1 :].clone(), drafts


@pytest.fixture(scope="module")
def reference_draws(context_logits) -> tuple[list[int], list[int]]:
    """The non-speculative sampler's draws after the context and after draft 0."""
    logits, drafts = context_logits
    torch.manual_seed(1)
    return _reference_draws(logits[0], OUTPUT), _reference_draws(logits[1], OUTPUT + drafts[:1])


def _row(output: list[int]) -> SamplingRow:
    return SamplingRow(PARAMS, PROMPT, output, 2, None)


def _reference_draws(logits: torch.Tensor, output: list[int]) -> list[int]:
    """NUM_DRAWS tokens from the non-speculative sampler at one position."""
    sampler = Sampler()
    draws: list[int] = []
    for _ in range(NUM_DRAWS // CHUNK):
        rows = [_row(output)] * CHUNK
        draws += sampler(logits[None, :].expand(CHUNK, -1).contiguous(), rows).token_ids
    return draws


def _speculative_draws(logits: torch.Tensor, drafts: list[int]) -> list[list[int]]:
    """NUM_DRAWS verifications of the same two drafts: each the tokens speculation emits."""
    k = len(drafts)
    rows = [_row(OUTPUT + drafts[:j]) for j in range(k + 1)]
    results: list[list[int]] = []
    for _ in range(NUM_DRAWS // CHUNK):
        spans = [DraftSpan(i * (k + 1), drafts, None, False) for i in range(CHUNK)]
        batch = logits[None].expand(CHUNK, -1, -1).reshape(CHUNK * (k + 1), -1)
        results += verify(batch, rows * CHUNK, spans)
    return results


def chi_square_p_value(a: list[int], b: list[int]) -> float:
    """Two-sample chi-square test of two samples of tokens (bins with fewer than 10 draws in
    both samples together are merged into one)."""
    ca, cb = Counter(a), Counter(b)
    na, nb = len(a), len(b)
    bins: list[tuple[int, int]] = []
    rare = [0, 0]
    for token in set(ca) | set(cb):
        x, y = ca[token], cb[token]
        if x + y >= 10:
            bins.append((x, y))
        else:
            rare[0] += x
            rare[1] += y
    if sum(rare):
        bins.append((rare[0], rare[1]))
    ka, kb = (nb / na) ** 0.5, (na / nb) ** 0.5
    stat = sum((ka * x - kb * y) ** 2 / (x + y) for x, y in bins)
    dof = len(bins) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def _first_and_second(results: list[list[int]], first_draft: int) -> tuple[list[int], list[int]]:
    first = [r[0] for r in results]
    second = [r[1] for r in results if len(r) > 1 and r[0] == first_draft]
    return first, second


def test_speculative_sampling_matches_the_sampler(context_logits, reference_draws):
    logits, drafts = context_logits
    torch.manual_seed(0)
    first, second = _first_and_second(_speculative_draws(logits, drafts), drafts[0])
    want_first, want_second = reference_draws
    # The drafts are often rejected and often accepted: both branches are being tested.
    assert 0.15 < first.count(drafts[0]) / len(first) < 0.85
    assert len(second) > 2000
    assert len(set(first)) > 5
    assert chi_square_p_value(first, want_first) > 1e-3
    assert chi_square_p_value(second, want_second) > 1e-3


def test_the_chi_square_test_catches_biased_acceptance(
    context_logits, reference_draws, monkeypatch
):
    logits, drafts = context_logits
    monkeypatch.setattr(
        rejection, "acceptance_probability", lambda p, q: (1.25 * p / q).clamp(max=1.0)
    )
    torch.manual_seed(0)
    first, _ = _first_and_second(_speculative_draws(logits, drafts), drafts[0])
    assert chi_square_p_value(first, reference_draws[0]) < 1e-3


def test_seeded_verification_is_reproducible(context_logits):
    logits, drafts = context_logits
    rows = [_row(OUTPUT + drafts[:j]) for j in range(3)]

    def run(seed: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [verify(logits, rows, [DraftSpan(0, drafts, gen, False)])[0] for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)
