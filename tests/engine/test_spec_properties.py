"""Property-based differential test of speculative decoding's bookkeeping (issue 16).

The crowded workloads of test_kv_properties (tight pools that preempt, tiny token budgets that
chunk prompts, shared prefixes, aborts, n>1, prefix caching on and off) run on the tiny model
with speculation on, the invariant checker around every step. The proposer knows each
request's true greedy continuation and corrupts it at random: drafts are accepted in full, in
part or not at all, and bursts run into max_tokens. Every request's tokens must equal what it
gets alone without speculation; rejected drafts must never reach the prefix cache (the checker
verifies every cached block's K/V) and the KV cache must roll back to the accepted tokens.
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.helpers import assert_outcomes_match_alone
from tests.engine.test_kv_properties import (
    Req,
    Workload,
    alone,
    crowded_workloads,
    engine,  # noqa: F401 (fixture)
    preempting_workloads,
    run,
)
from triode.engine.spec_decode.config import SpeculativeConfig


class CorruptingOracle:
    """Proposes the next tokens of a known continuation, each draft position wrong with some
    probability (then the rest of the drafts are random too)."""

    def __init__(self, continuations: dict[tuple[int, ...], list[int]], seed: int) -> None:
        self.continuations = continuations
        self.rng = random.Random(seed)
        self.num_proposals = 0

    def propose(self, token_ids: list[int]) -> list[int]:
        for prompt, tokens in self.continuations.items():
            n = len(prompt)
            if tuple(token_ids[:n]) == prompt and token_ids[n:] == tokens[: len(token_ids) - n]:
                truth = tokens[len(token_ids) - n :]
                break
        else:
            return []
        k = self.rng.randint(1, 4)
        drafts = list(truth[:k]) + [self.rng.randrange(300, 320)] * (k - len(truth[:k]))
        wrong_at = self.rng.choice([k, k, 0, 1, 2, 3])
        for j in range(wrong_at, k):
            drafts[j] = self.rng.randrange(300, 320)
        self.num_proposals += 1
        return drafts


def _greedy(workload: Workload) -> Workload:
    reqs = tuple(dataclasses.replace(r, seed=None, n=min(r.n, 2)) for r in workload.requests)
    return dataclasses.replace(workload, requests=reqs)


@settings(max_examples=25)
@given(
    workload=st.one_of(crowded_workloads(), preempting_workloads()).map(_greedy),
    seed=st.integers(0, 3),
)
def test_speculating_requests_get_the_tokens_they_get_alone(engine, workload, seed):  # noqa: F811
    want = {req: alone(engine, req) for req in workload.requests}
    oracle = CorruptingOracle({r.prompt: want[r].tokens[0] for r in workload.requests}, seed)
    engine.speculative_config = SpeculativeConfig(disable_by_batch_size=1000)
    engine.proposer = oracle
    try:
        outcomes = run(engine, workload)
    finally:
        engine.speculative_config = None
        engine.proposer = None
    assert_outcomes_match_alone(workload.requests, outcomes, want)
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks


def test_the_oracle_makes_speculation_happen(engine):  # noqa: F811
    """The property above is about verification: make sure drafts are verified and both
    accepted and rejected in a plain workload."""
    req = Req((300, 301, 302, 303, 304), 12, 1, None, 0, 0, None)
    want = alone(engine, req)
    engine.speculative_config = SpeculativeConfig(disable_by_batch_size=1000)
    engine.proposer = CorruptingOracle({req.prompt: want.tokens[0]}, 0)
    try:
        outcomes = run(engine, Workload((req,), 64, 32, 4, True))
    finally:
        engine.speculative_config = None
        engine.proposer = None
    stats = engine.scheduler.spec_stats
    (outcome,) = outcomes.values()
    assert outcome.tokens == want.tokens
    assert stats.num_drafts > 0
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
