"""Property-based differential test of speculation with a real draft model (issue 16).

The crowded workloads of test_kv_properties (tight pools that preempt, tiny token budgets that
chunk prompts, shared prefixes, aborts, n>1, prefix caching on and off) run on the tiny model
with the tiny model itself as its draft, in a draft cache of random size (often too small for
everyone: those requests then decode without drafts) whose K/V tensors start full of noise.
Every request's tokens must equal what it gets alone without speculation; the draft's
bookkeeping is checked after every step (DraftModelProposer.check) and its pool must be empty
at the end; and since the draft is the served model, nearly every draft must be accepted,
which fails if the draft ever reads a slot it did not write for that sequence.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.helpers import assert_outcomes_match_alone
from tests.engine.test_kv_properties import (
    BLOCK_SIZE,
    ROOMY_BLOCKS,
    Req,
    Workload,
    alone,
    crowded_workloads,
    engine,  # noqa: F401 (fixture)
    preempting_workloads,
    run,
)
from tests.engine.test_spec_properties import _greedy
from triode.engine.llm_engine import LLMEngine
from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.draft_kv import DraftKVCache
from triode.engine.spec_decode.draft_model import DraftModelProposer, load_draft_proposer


@pytest.fixture(scope="module")
def draft(engine: LLMEngine, tiny_folder) -> DraftModelProposer:  # noqa: F811
    spec = SpeculativeConfig(method="draft_model", model=str(tiny_folder), num_speculative_tokens=3)
    return load_draft_proposer(
        engine.config, spec, engine.tokenizer, engine.vocab_size, 1024, ROOMY_BLOCKS
    )


@settings(max_examples=15)
@given(
    workload=st.one_of(crowded_workloads(), preempting_workloads()).map(_greedy),
    num_draft_blocks=st.sampled_from([4, 12, 64]),
)
def test_requests_speculating_with_a_draft_model_get_the_tokens_they_get_alone(
    engine,  # noqa: F811
    draft,
    workload,
    num_draft_blocks,
):
    want = {req: alone(engine, req) for req in workload.requests}
    noise = torch.Generator().manual_seed(1)
    for k_cache, v_cache in draft.runner.kv_caches:
        k_cache.normal_(generator=noise)
        v_cache.normal_(generator=noise)
    draft.kv = DraftKVCache(num_draft_blocks, BLOCK_SIZE)
    draft.max_catch_up_tokens = workload.max_num_batched_tokens
    engine.speculative_config = SpeculativeConfig(
        method="draft_model", model="draft", disable_by_batch_size=1000
    )
    engine.proposer = draft
    try:
        outcomes = run(engine, workload)
        stats = engine.scheduler.spec_stats
    finally:
        engine.speculative_config = None
        engine.proposer = None
    assert_outcomes_match_alone(workload.requests, outcomes, want)
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert draft.kv.num_free_blocks == draft.kv.num_blocks and not draft.kv.seq_ids()
    assert draft.num_failures == 0
    assert stats.num_accepted_tokens >= 0.9 * stats.num_draft_tokens, stats


def test_the_draft_makes_speculation_happen(engine, draft):  # noqa: F811
    """The property above is about verification: make sure a plain workload's drafts are
    verified and accepted, and that a draft cache too small for a request's context is caught
    up in chunks under the step budget."""
    reqs = (
        Req((300, 301, 302, 303, 304), 12, 1, None, 0, 0, None),
        Req(tuple(range(310, 340)), 20, 1, None, 0, 0, None),
    )
    want = [alone(engine, req) for req in reqs]
    draft.kv = DraftKVCache(64, BLOCK_SIZE)
    draft.max_catch_up_tokens = 8
    engine.speculative_config = SpeculativeConfig(
        method="draft_model", model="draft", disable_by_batch_size=1000
    )
    engine.proposer = draft
    try:
        outcomes = run(engine, Workload(reqs, 64, 32, 4, True))
    finally:
        engine.speculative_config = None
        engine.proposer = None
    stats = engine.scheduler.spec_stats
    assert [o.tokens for o in outcomes.values()] == [w.tokens for w in want]
    assert stats.num_drafts >= 5
    assert stats.num_accepted_tokens >= 0.9 * stats.num_draft_tokens > 0
