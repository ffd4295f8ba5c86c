"""Property-based differential tests of the scheduler and the KV cache (issue 10).

Random crowded workloads on the tiny random-weight Llama (staggered arrivals, priorities, tight
pools, tiny token budgets, shared prefixes, aborts at random steps, n>1 with seeds, prefix
caching on and off): every request's tokens must equal the tokens it gets when it runs alone in
a roomy pool, and the invariant checker (engine/core/kv_invariants.py) runs around every step.

One loaded engine serves every example: each gets a fresh scheduler over the same weights, and
KV tensors full of noise, which a read of an unwritten slot would turn into different tokens.

Profiles (tests/conftest.py): `ci` by default (100 fixed examples, ~15-30 s on 2 cores);
`pytest --hypothesis-profile=thorough --timeout=0 tests/engine/test_kv_properties.py` for a long
local run (1,311 random examples took 10 minutes on 2 busy cores).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from triode.engine.config import EngineConfig
from triode.engine.core.scheduler import Scheduler, SchedulerOutput
from triode.engine.inputs import EngineInput
from triode.engine.llm_engine import LLMEngine
from triode.engine.output_processor import OutputProcessor
from triode.engine.sampling.sampling_params import SamplingParams

# NOTE: one test item runs every example (each bounded by MAX_STEPS), ~20-30 s on 2 idle
# cores; the suite's 600 s per test was exceeded on a machine shared by several suites.
pytestmark = pytest.mark.timeout(1800)

BLOCK_SIZE = 4
ROOMY_BLOCKS = 256
MAX_STEPS = 3000
_ids = itertools.count()


@dataclass(frozen=True)
class Req:
    prompt: tuple[int, ...]
    max_tokens: int
    n: int
    seed: int | None  # None: greedy
    priority: int
    arrival_step: int
    abort_after: int | None  # steps after arrival; None: never

    def params(self) -> SamplingParams:
        if self.seed is None:
            return SamplingParams(n=self.n, max_tokens=self.max_tokens, temperature=0)
        # NOTE: seeded samples draw among the top 5 tokens. Over the whole vocabulary of a
        # random-weight model (nearly flat, 49,152 CDF boundaries), the float noise that
        # depends on the batch (~1e-6 in a logit) moves some boundary across the drawn number
        # about once in a thousand draws: a real difference, but not one this test is about.
        return SamplingParams(
            n=self.n, max_tokens=self.max_tokens, temperature=1.0, top_k=5, seed=self.seed
        )


@dataclass(frozen=True)
class Workload:
    requests: tuple[Req, ...]
    num_blocks: int
    max_num_batched_tokens: int
    max_num_seqs: int
    enable_prefix_caching: bool


def _tokens(min_size: int, max_size: int) -> st.SearchStrategy[tuple[int, ...]]:
    # A small alphabet: prompts often share whole blocks, and sometimes only part of one.
    return st.lists(st.integers(300, 311), min_size=min_size, max_size=max_size).map(tuple)


def _req(draw: st.DrawFn, prompt: tuple[int, ...], priority: int, arrival_step: int) -> Req:
    return Req(
        prompt=prompt,
        max_tokens=draw(st.integers(1, 8)),
        n=draw(st.sampled_from([1, 2, 3])),
        seed=draw(st.sampled_from([None, 0, 1, 2])),
        priority=priority,
        arrival_step=arrival_step,
        abort_after=draw(st.sampled_from([None] * 9 + [0, 1, 3, 6])),
    )


def _workload(
    draw: st.DrawFn,
    requests: list[Req],
    budgets: list[int],
    max_extra_blocks: int = 8,
    max_num_seqs: tuple[int, ...] = (4, 2, 6, 1),
) -> Workload:
    # The pool fits the largest request alone, and little more: preemptions are common.
    min_blocks = max(-(-(len(r.prompt) + r.max_tokens) // BLOCK_SIZE) for r in requests)
    return Workload(
        requests=tuple(requests),
        num_blocks=min_blocks + draw(st.integers(0, max_extra_blocks)),
        max_num_batched_tokens=draw(st.sampled_from(budgets)),
        max_num_seqs=draw(st.sampled_from(max_num_seqs)),
        enable_prefix_caching=draw(st.sampled_from([True, False])),
    )


@st.composite
def crowded_workloads(draw: st.DrawFn) -> Workload:
    """Several requests, some sharing a prefix, arriving over the first steps."""
    # NOTE: hypothesis starts from, and shrinks toward, the first value of each choice, so the
    # first values make a crowded workload: several requests sharing a prefix at once, a
    # pool that holds barely more than the largest one, a budget of a few blocks.
    prefixes = draw(st.lists(_tokens(4, 16), min_size=1, max_size=2))
    requests = [
        _req(
            draw,
            draw(st.sampled_from(prefixes)) + draw(_tokens(1, 8)),
            draw(st.integers(0, 2)),
            draw(st.integers(0, 6)),
        )
        for _ in range(draw(st.integers(2, 6)))
    ]
    return _workload(draw, requests, [8, 3, 16, 1, 5, 32, 2])


@st.composite
def preempting_workloads(draw: st.DrawFn) -> Workload:
    """Issue 10's shape: a long low-priority prompt still being prefilled in chunks when
    higher-priority requests arrive and preempt it, often in the step that just scheduled
    its next chunk."""
    long_prompt = draw(_tokens(12, 28))
    requests = [_req(draw, long_prompt, 2, 0)]
    for _ in range(draw(st.integers(1, 3))):
        shared = long_prompt[: draw(st.integers(0, len(long_prompt)))]
        prompt = shared + draw(_tokens(1, 10))
        requests.append(_req(draw, prompt, draw(st.integers(0, 1)), draw(st.integers(1, 3))))
    return _workload(draw, requests, [8, 12, 5, 16, 20], 3, (1, 2, 4))


workloads = st.one_of(crowded_workloads(), preempting_workloads())


@pytest.fixture(scope="module")
def engine(tiny_folder) -> LLMEngine:
    return LLMEngine(
        EngineConfig(model=str(tiny_folder), block_size=BLOCK_SIZE, num_kv_blocks=ROOMY_BLOCKS)
    )


def reconfigure(engine: LLMEngine, num_blocks: int, **limits: object) -> None:
    """A fresh scheduler and output processor over the loaded weights, with the invariant
    checker on: a new engine in all but the model. The KV tensors are filled with the same
    noise each time, so a read of a slot no step wrote changes the tokens, reproducibly."""
    noise = torch.Generator().manual_seed(0)
    for k_cache, v_cache in engine.runner.kv_caches:
        k_cache.normal_(generator=noise)
        v_cache.normal_(generator=noise)
    config = dataclasses.replace(engine.config, num_kv_blocks=num_blocks, **limits)
    engine.config = config
    engine.max_model_len = min(engine.runner.max_position_embeddings, num_blocks * BLOCK_SIZE)
    engine.model_info = dataclasses.replace(engine.model_info, max_model_len=engine.max_model_len)
    engine.scheduler = Scheduler(config, num_blocks, engine.max_model_len)
    engine.outputs = OutputProcessor(engine.tokenizer)
    engine.enable_invariant_checks()


@dataclass
class Outcome:
    tokens: dict[int, list[int]]  # sample index -> token ids
    finish_reasons: dict[int, str | None]


def run(
    engine: LLMEngine,
    workload: Workload,
    poisoned: frozenset[int] = frozenset(),
    run_step=LLMEngine.step,
    snapshots: list | None = None,
) -> dict[str, Outcome]:
    """Run a workload; the outcome per request id (ids are unique across examples, so no
    per-request state of the runner, such as a seeded generator, is ever shared). Requests
    whose index is in `poisoned` carry a sampling parameter no check let through: their first
    step that samples raises. `run_step(engine)` runs one step; `snapshots` gets the pool's state
    after each."""
    reconfigure(
        engine,
        workload.num_blocks,
        max_num_batched_tokens=workload.max_num_batched_tokens,
        max_num_seqs=workload.max_num_seqs,
        enable_prefix_caching=workload.enable_prefix_caching,
    )
    ids = [f"r{next(_ids)}" for _ in workload.requests]
    outcomes = {rid: Outcome({}, {}) for rid in ids}
    pending = sorted(range(len(ids)), key=lambda i: workload.requests[i].arrival_step)
    aborts = {
        i: r.arrival_step + r.abort_after
        for i, r in enumerate(workload.requests)
        if r.abort_after is not None
    }

    def record(deltas) -> None:
        for delta in deltas:
            outcome = outcomes[delta.request_id]
            outcome.tokens.setdefault(delta.index, []).extend(delta.token_ids)
            if delta.finish_reason is not None:
                outcome.finish_reasons[delta.index] = delta.finish_reason

    for step in range(MAX_STEPS):
        while pending and workload.requests[pending[0]].arrival_step <= step:
            i = pending.pop(0)
            r = workload.requests[i]
            if i in poisoned:
                params = r.params()
                params.min_tokens, params.stop_token_ids = 2, [10**6]  # indexes past the vocab
                engine.add_input(
                    ids[i], EngineInput(list(r.prompt), params, r.max_tokens, r.priority)
                )
            else:
                engine.add_request(ids[i], list(r.prompt), r.params(), priority=r.priority)
        for i, at in aborts.items():
            if at == step:
                record(engine.abort([ids[i]]))
                engine.invariant_checker.check()
        if not pending and not engine.has_unfinished_requests():
            return outcomes
        record(run_step(engine))
        if snapshots is not None:
            snapshots.append(pool_state(engine, {rid: i for i, rid in enumerate(ids)}))
    raise AssertionError(f"the workload did not finish in {MAX_STEPS} steps: {workload}")


_alone: dict[Req, Outcome] = {}


def alone(engine: LLMEngine, req: Req) -> Outcome:
    """The request's outcome when it runs alone in a roomy pool (memoized)."""
    key = dataclasses.replace(req, priority=0, arrival_step=0, abort_after=None)
    if key not in _alone:
        solo = Workload((key,), ROOMY_BLOCKS, 512, 8, enable_prefix_caching=False)
        (_alone[key],) = run(engine, solo).values()
    return _alone[key]


@given(workload=workloads)
def test_crowded_requests_get_the_tokens_they_get_alone(engine, workload):
    outcomes = run(engine, workload)
    for req, outcome in zip(workload.requests, outcomes.values()):
        want = alone(engine, req)
        if req.abort_after is None:
            assert outcome.tokens == want.tokens, req
            assert outcome.finish_reasons == want.finish_reasons, req
            continue
        for index, tokens in outcome.tokens.items():  # aborted: whatever it got, in order
            assert tokens == want.tokens[index][: len(tokens)], req
            assert outcome.finish_reasons[index] in ("abort", want.finish_reasons[index])
    kv = engine.scheduler.kv
    assert kv.num_free_blocks == kv.num_blocks


def pool_state(engine: LLMEngine, index_of: dict[str, int]) -> tuple:
    """Everything the KV cache and the scheduler hold, with requests named by their index in
    the workload (and sample index)."""
    scheduler = engine.scheduler
    kv = scheduler.kv
    pool = kv.pool

    def name(request_id: str) -> tuple[int, int]:
        request = scheduler.requests[request_id]
        return index_of[request.group_id], request.index

    return (
        pool.free_queue.block_ids(),
        [b.ref_cnt for b in pool.blocks],
        sorted((b.block_id, b.token_ids) for b in pool.cached.values()),
        sorted(
            (name(rid), tuple(r.block_ids), r.num_computed_tokens, tuple(r.all_token_ids))
            for rid, r in scheduler.requests.items()
        ),
        [name(r.request_id) for r in scheduler.running],
        sorted(name(r.request_id) for r in scheduler.waiting_requests()),
    )


def step_without_the_faulty(engine: LLMEngine) -> list:
    """The reference for a failed step: the poisoned requests that would sample in it are
    failed right after scheduling, before anything runs, and the others run as one batch."""
    sched = engine.scheduler.schedule()
    engine.invariant_checker.before_runner_call(sched)
    doomed = {
        engine.scheduler.requests[item.request_id].group_id
        for item in sched.scheduled
        if item.sample_ids and 10**6 in item.sampling_params.stop_token_ids
    }
    deltas = engine.fail(sorted(doomed), "poisoned")
    rest = [i for i in sched.scheduled if i.request_id in engine.scheduler.requests]
    output = engine._execute(
        SchedulerOutput(
            scheduled=rest,
            num_scheduled_tokens=sum(len(i.token_ids) for i in rest),
            blocks_to_copy=sched.blocks_to_copy,
        )
    )
    updated, _ = engine.scheduler.update_from_output(sched, output.sampled, engine.outputs)
    deltas += engine.outputs.make_deltas(updated, output.logprobs)
    engine.invariant_checker.check()
    return deltas


def tokens_and_reasons(outcomes: dict[str, Outcome]) -> list[tuple]:
    return [(o.tokens, o.finish_reasons) for o in outcomes.values()]


# NOTE: a quarter of the profile's examples: each runs its workload twice, and the solo runs
# of the main property already cover what these requests get.
@settings(max_examples=max(10, settings().max_examples // 4))
@given(workload=workloads, poison=st.sets(st.integers(0, 5), min_size=1, max_size=2))
def test_a_failed_step_leaves_the_pool_as_if_its_faulty_requests_never_ran(
    engine, workload, poison
):
    """Issue 10: a failed step leaves the pool exactly as if the failing requests had not been
    scheduled (they end; nothing they computed in it is registered, no block leaks, nothing
    else moves), and every other request carries on unchanged."""
    poisoned = frozenset(i % len(workload.requests) for i in poison)
    failed_steps: list = []
    got = run(engine, workload, poisoned, snapshots=failed_steps)
    removed_first: list = []
    want = run(engine, workload, poisoned, step_without_the_faulty, removed_first)
    assert failed_steps == removed_first
    assert tokens_and_reasons(got) == tokens_and_reasons(want)
    for i in poisoned:
        outcome = list(got.values())[i]
        assert set(outcome.finish_reasons.values()) <= {"error", "abort"}
    assert engine.num_failed_steps == 0
