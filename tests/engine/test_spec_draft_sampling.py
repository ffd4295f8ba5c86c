"""Rejection sampling stays exact with a draft model's q (issue 16): a chi-square test over
20,000 draws at a fixed context on tiny models, temperature, top-p and penalties on. The draft
is a perturbed copy of the served model (it accepts about 3 drafts in 4), run by the real draft
proposer (the engine's model code and the draft's own paged KV cache), so q is far from one-hot
and not p; the served model's p comes from transformers. The proposer's drafts must follow
the q it reports; the tokens speculation emits must match the non-speculative sampler's; and
the same test must catch a verifier that biases acceptance."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass

import pytest
import torch

from tests.conftest import TOKENIZER_FILES, make_tiny_llama
from tests.engine.test_spec_sampling import chi_square_p_value
from triode.engine.config import EngineConfig
from triode.engine.core.request import Request, RequestStatus
from triode.engine.sampling.sampler import Sampler, SamplingRow
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.spec_decode import rejection
from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.draft_model import DraftModelProposer, load_draft_proposer
from triode.engine.spec_decode.rejection import DraftSpan, verify

NUM_DRAWS = 20_000
CHUNK = 5_000
NUM_PROPOSALS = 1_000  # drafts checked against their q (one draft prefill each: the cost)
K = 2
VOCAB = 128
PROMPT = [1, 17, 45, 100, 17, 45, 120, 9]
OUTPUT = [100, 17, 45]
PARAMS = SamplingParams(
    temperature=0.8, top_p=0.9, frequency_penalty=0.4, repetition_penalty=1.2, max_tokens=64
)
_ids = itertools.count()


@dataclass
class Draws:
    """What the tests share: the proposer's own drafts and q at the context; NUM_DRAWS draft
    pairs drawn from the draft model's q (q0 after the context, q1 after the context and the
    first draft), with the served model's logits rows [NUM_DRAWS * (K+1), V] for them; and
    the reference sampler's draws after the context."""

    proposed: list[list[int]]
    proposed_probs: list[torch.Tensor]
    drafts: list[list[int]]
    probs: list[torch.Tensor]
    logits: torch.Tensor
    served: object  # the transformers model
    reference_first: list[int]


def _perturbed_copy(folder, out, scale: float):
    """The model of `folder` with noise added to every matrix: a draft that mostly agrees."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    tensors = load_file(str(folder / "model.safetensors"))
    noise = torch.Generator().manual_seed(9)
    for name, t in tensors.items():
        if t.dim() > 1:
            tensors[name] = t + scale * torch.randn(t.shape, generator=noise)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json", *TOKENIZER_FILES):
        if (folder / name).exists():
            shutil.copy(folder / name, out / name)
    return out


def _row(output: list[int]) -> SamplingRow:
    return SamplingRow(PARAMS, PROMPT, output, 2, None)


def _request(output: list[int]) -> Request:
    request = Request(f"s{next(_ids)}", PROMPT, PARAMS, 64, eos_token_id=2)
    for token in output:
        request.append_output_token(token)
    request.status = RequestStatus.RUNNING
    return request


def _propose(proposer: DraftModelProposer, outputs: list[list[int]]):
    requests = [_request(output) for output in outputs]
    proposals = proposer.propose(requests, 1024)
    proposer.release({})
    assert proposer.kv.num_free_blocks == proposer.kv.num_blocks
    return [proposals[r.request_id] for r in requests]


@pytest.fixture(scope="module")
def draws(tmp_path_factory, bundled_folder) -> Draws:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("draft-sampling")
    served_folder = make_tiny_llama(root / "served", bundled_folder, vocab_size=VOCAB, seed=3)
    draft_folder = _perturbed_copy(served_folder, root / "draft", scale=0.02)
    config = EngineConfig(model=str(served_folder), block_size=16, max_num_batched_tokens=1 << 16)
    spec = SpeculativeConfig(
        method="draft_model",
        model=str(draft_folder),
        num_speculative_tokens=K,
        draft_num_kv_blocks=NUM_PROPOSALS,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(served_folder))
    proposer = load_draft_proposer(config, spec, tokenizer, VOCAB, 1024, NUM_PROPOSALS)
    torch.manual_seed(0)
    proposals = _propose(proposer, [OUTPUT] * NUM_PROPOSALS)
    # q after the context (the first draft's), and after the context and each token t.
    q0 = proposals[0].probs[0]
    q1 = torch.stack([p.probs[0] for p in _propose(proposer, [OUTPUT + [t] for t in range(VOCAB)])])
    # NOTE: the many draws come from those q (drawing them through the proposer would cost
    # one draft prefill per draw); the proposer's own draws are checked against q separately.
    gen = torch.Generator().manual_seed(1)
    first = torch.multinomial(q0, NUM_DRAWS, replacement=True, generator=gen)
    second = torch.multinomial(q1[first], 1, generator=gen)[:, 0]
    drafts = torch.stack([first, second], dim=1).tolist()
    probs = [torch.stack([q0, q1[d1]]) for d1, _ in drafts]
    # The served model's logits after the context and after each draft, per distinct drafts.
    served = AutoModelForCausalLM.from_pretrained(served_folder, dtype=torch.float32)
    context = PROMPT + OUTPUT
    distinct = sorted(set(map(tuple, drafts)))
    with torch.no_grad():
        out = served(torch.tensor([context + list(d) for d in distinct])).logits
    rows_of = {d: out[i, len(context) - 1 :] for i, d in enumerate(distinct)}
    logits = torch.cat([rows_of[tuple(d)] for d in drafts])
    sampler = Sampler()
    reference: list[int] = []
    row0 = rows_of[distinct[0]][0]
    for _ in range(NUM_DRAWS // CHUNK):
        rows = [_row(OUTPUT)] * CHUNK
        reference += sampler(row0[None].expand(CHUNK, -1).contiguous(), rows).token_ids
    return Draws(
        [p.token_ids for p in proposals],
        [p.probs for p in proposals],
        drafts,
        probs,
        logits,
        served,
        reference,
    )


def _target_probs(logits: torch.Tensor, output: list[int]) -> torch.Tensor:
    rows = [_row(output)]
    return rejection.target_probs(rejection.process_logits(logits[None], rows), rows)[0]


def _verify_all(draws: Draws) -> list[list[int]]:
    results: list[list[int]] = []
    for c in range(NUM_DRAWS // CHUNK):
        part = range(c * CHUNK, (c + 1) * CHUNK)
        spans = [DraftSpan(i * (K + 1), draws.drafts[n], None, False) for i, n in enumerate(part)]
        # Rows' penalties count the drafts before them: per span, not the first span's.
        span_rows = [_row(OUTPUT + draws.drafts[n][:j]) for n in part for j in range(K + 1)]
        logits = draws.logits[c * CHUNK * (K + 1) : (c + 1) * CHUNK * (K + 1)]
        results += verify(logits, span_rows, spans, [draws.probs[n] for n in part])
    return results


def test_draft_proposals_are_drawn_from_their_q(draws):
    """q is the draft model's distribution, not one-hot and not p, and the proposer's drafts
    follow it."""
    first_q = torch.stack([q[0] for q in draws.proposed_probs])
    assert torch.allclose(first_q, first_q[:1].expand_as(first_q))  # same context, same q
    q0 = first_q[0]
    assert q0.max() < 0.9 and (q0 > 0.01).sum() >= 3
    counts = torch.bincount(torch.tensor([d[0] for d in draws.proposed]), minlength=VOCAB)
    expected = q0 * len(draws.proposed)
    assert counts[expected == 0].sum() == 0  # nothing top-p excludes is ever proposed
    seen = expected > 10
    stat = ((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum().item()
    dof = int(seen.sum()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))
    assert p_value > 1e-3


def test_speculative_sampling_with_a_draft_model_matches_the_sampler(draws):
    torch.manual_seed(1)
    results = _verify_all(draws)
    first = [r[0] for r in results]
    accepted_first = sum(len(r) > 1 for r in results) / NUM_DRAWS
    # Drafts are often accepted and often rejected: both branches are being tested. And q is
    # used: the first draft is accepted at the rate sum(min(p, q)) (treating the drafts as
    # certain, q one-hot, would be as exact but accept them at the rate sum(q * p) only).
    p0 = _target_probs(draws.logits[0], OUTPUT)
    q0 = draws.probs[0][0]
    assert 0.3 < accepted_first < 0.9
    assert abs(accepted_first - torch.minimum(p0, q0).sum().item()) < 0.02
    assert (q0 * p0).sum().item() < accepted_first - 0.2
    assert chi_square_p_value(first, draws.reference_first) > 1e-3
    # The second token, given the first draft t was accepted, follows p(. | context + t).
    t = max(set(first), key=first.count)
    second = [r[1] for r, d in zip(results, draws.drafts) if len(r) > 1 and d[0] == t]
    assert len(second) > 2000
    with torch.no_grad():
        row = draws.served(torch.tensor([PROMPT + OUTPUT + [t]])).logits[0, -1]
    torch.manual_seed(2)
    sampler = Sampler()
    want = sampler(
        row[None].expand(len(second), -1).contiguous(), [_row(OUTPUT + [t])] * len(second)
    )
    assert chi_square_p_value(second, want.token_ids) > 1e-3


def test_the_test_catches_biased_acceptance(draws, monkeypatch):
    monkeypatch.setattr(
        rejection, "acceptance_probability", lambda p, q: (1.25 * p / q).clamp(max=1.0)
    )
    torch.manual_seed(1)
    first = [r[0] for r in _verify_all(draws)]
    assert chi_square_p_value(first, draws.reference_first) < 1e-3
